/* kvferry's resume protocol, for SPIN: every interleaving of a bounded configuration.
 *
 * One server (its RPCs are atomic steps: the real one is a single event loop) with a LIFO pool
 * of NB one-token blocks, shared by two transfer ids: slot 0 ("x") is opened, released and
 * opened again (incarnations), slot 1 ("y") runs beside it. Each opening moves a few tokens,
 * one per window, so it needs one resume fewer than it has tokens. Its sender is one-sided: Attach (a grant per
 * window), write the row into the granted block, Commit; a write may also "land late" (after a
 * Mooncake timeout, or from a sender that crashed), any time, even after its transfer is gone.
 * Its receiver is two tensor-parallel ranks (readers): each reads every full window from the
 * pool itself, one after the other, and then sends a Resume naming itself, into a network that
 * delays and reorders them, across Release and reopening; the window moves on once both ranks
 * resumed it (rule 4a). Faults
 * (FAULTS of them: an Abort by either side, or a stall or lease timeout, all of which fail the
 * transfer at any moment; a sender crash; a write reported failed that may still land) happen
 * anywhere. The stall timeout also fires whenever nothing else can happen.
 *
 * State moves only through the FIRE_ macros of lifecycle.pml, generated from the core's table.
 * Properties (assertions; a violation leaves a trail):
 *   P1 no block is owned by two transfers (alloc takes only blocks nobody holds or fences);
 *   P2 no write lands in a block another transfer owns (the fence);
 *   P3 every token is delivered once and in order, and a window is freed only after every rank
 *      read it (a resume, a release);
 *   P4 sent_tokens never decreases (commit only adds);
 *   P5 a terminal state is never left (the generated FIRE_ guards);
 *   P6 a resume for an earlier incarnation is never applied;
 *   P7 no hang: the system is stuck with a live transfer only after a fault.
 * Liveness (ltl done): every run ends with every transfer terminal and released.
 *
 * Broken variants, each of which must yield a trail:
 *   -DSEED_GUARD      resumes deduplicated by block index (the seed bug) instead of sent_tokens
 *   -DNO_INCARNATION  resumes not checked against the incarnation they were sent for
 *   -DNO_FENCE        a lent window's blocks freed at once when its transfer fails
 *   -DFIRST_RESUME    the window moves on at the first rank's resume, not once every rank's
 *
 * Each server step prints an "EV ..." line: `spin -t` replays a trail as those lines, and
 * tests/core/test_verification.py drives the real Coordinator through them.
 */

#include "lifecycle.pml"

/* Tokens of each opening: x's first (two resumes: the seed bug needs a second window with the
 * first one's block), x's second, and y's. */
#ifndef TOTAL_X1
#define TOTAL_X1 3
#endif
#ifndef TOTAL_X2
#define TOTAL_X2 2
#endif
#ifndef TOTAL_Y
#define TOTAL_Y 1
#endif
#ifndef YOPEN
#define YOPEN 1   /* 0: no y at all */
#endif
#ifndef FAULTS
#define FAULTS 1
#endif
#define NB 2
#define NS 2
#define NINC 4
#define BAG 2
#define RANKS 2         /* tensor-parallel ranks: each reads every window and resumes it */
#define ALL_READERS 3   /* (1 << RANKS) - 1: every rank's bit */
#define NONE 255
#define TAG(n, tok) ((n) * 8 + (tok))

/* The server: per transfer slot. */
byte st[NS];            /* lifecycle state; 0: not held */
byte inc[NS];           /* incarnation of the opening held */
byte total[NS];
byte sent[NS];
byte wstart[NS];
byte wtok[NS];
byte blk[NS];           /* the window's block; NONE while it has none */
short lastres[NS];      /* sent_tokens of the last applied resume; -1 before the first */
byte resd[NS];          /* ranks (a bit each) whose resume of the current window is recorded */
byte lastblk[NS];       /* SEED_GUARD: the window's block at the last applied resume */
byte wepoch[NS];
byte lent[NS];          /* epoch of the window lent to the writer; 0: none */
bool waiting[NS];       /* a resume waits for a free block */
byte firstw = NONE;     /* the slot that began waiting first (waiters are served in order) */
byte nextinc = 1;
byte nextepoch = 1;

/* The pool. */
byte freestk[NB];       /* LIFO free list: freed blocks are handed out first */
byte nfree = 0;
byte owner[NB];         /* incarnation whose window holds the block; 0: none */
byte fence_epoch[NB];   /* fenced: the lent window's epoch; 0: not fenced */
byte fence_inc[NB];     /* fenced: the writer's incarnation */
byte data[NB];          /* TAG of the row last landed */

/* Writes in flight, per writer (incarnation), and what each receiver read. */
bool pw_on[NINC];
bool pw_late[NINC];     /* its writer gave up on it (a timeout or a crash): it lands when it lands */
byte pw_blk[NINC];
byte pw_tok[NINC];
byte consumed[NINC * RANKS];   /* tokens read by each rank of each opening: CONS(n, r) */
#define CONS(n, r) consumed[(n) * RANKS + (r)]

/* Resumes in flight. */
bool bag_on[BAG];
byte bag_slot[BAG];
byte bag_inc[BAG];
byte bag_sent[BAG];
byte bag_rank[BAG];

/* Faults planned for this run: 0 or FAULTS, chosen at the start, so that a run without faults
 * is one in which no fault can happen at all (a fault that is merely possible would always be
 * there to take when the system is stuck, and P7 would never be tested). */
byte plan = 0;
byte faults = 0;
byte done = 0;          /* receivers finished */

hidden byte b_;
hidden byte j_;

inline alloc_into(i) {
    if
    :: nfree > 0 ->
        nfree--;
        b_ = freestk[nfree];
        assert(owner[b_] == 0 && fence_epoch[b_] == 0);   /* P1 */
        blk[i] = b_;
        owner[b_] = inc[i];
        freestk[nfree] = 0
    :: else -> blk[i] = NONE
    fi
}

inline free_block(b) {
    owner[b] = 0;
    freestk[nfree] = b;
    nfree++
}

inline start_waiting(i) {
    waiting[i] = true;
    if
    :: firstw == NONE -> firstw = i
    :: else -> skip
    fi
}

inline stop_waiting(i) {
    waiting[i] = false;
    if
    :: firstw == i && waiting[1 - i] -> firstw = 1 - i
    :: firstw == i && !waiting[1 - i] -> firstw = NONE
    :: else -> skip
    fi
}

/* The core's _serve_waiting: first come, first served, while blocks last. */
inline serve_waiting() {
    do
    :: firstw != NONE && nfree > 0 -> j_ = firstw; alloc_into(j_); stop_waiting(j_)
    :: else -> break
    od;
    j_ = 0
}

/* What the replay compares with the real core after every step. */
inline report() {
    printf("EV = %d %d %d %d\n", st[0], sent[0], st[1], sent[1])
}

/* The core's _free_window: a window lent to the writer and not fully committed is fenced. */
inline free_window(i) {
    if
    :: blk[i] != NONE ->
#ifndef NO_FENCE
        if
        :: lent[i] == wepoch[i] ->
            fence_epoch[blk[i]] = wepoch[i];
            fence_inc[blk[i]] = inc[i];
            owner[blk[i]] = 0;
            lent[i] = 0
        :: else -> free_block(blk[i])
        fi;
#else
        free_block(blk[i]);
        lent[i] = 0;
#endif
        blk[i] = NONE;
        wepoch[i] = nextepoch;
        nextepoch++
    :: else -> skip
    fi
}

inline lift(b) {
    fence_epoch[b] = 0;
    fence_inc[b] = 0;
    free_block(b);
    serve_waiting()
}

inline lift_epoch(e) {
    if
    :: e != 0 && fence_epoch[0] == e -> lift(0)
    :: e != 0 && fence_epoch[1] == e -> lift(1)
    :: else -> skip
    fi
}

inline fail(i) {
    printf("EV fail %d %d\n", i, inc[i]);
    FIRE_fail(i, 0);
    if
    :: waiting[i] -> stop_waiting(i)
    :: else -> skip
    fi;
    free_window(i);
    serve_waiting();
    report()
}

inline deliver(i) {
    assert(sent[i] < total[i]);   /* P4: sent_tokens only grows, up to total */
    sent[i]++;
    if
    :: st[i] == RESUMING -> FIRE_deliver(i, 0)
    :: else -> skip
    fi;
    if
    :: CAN_complete(i, 0) -> FIRE_complete(i, 0)
    :: else -> skip
    fi
}

inline resume(i, n, s, r) {
    printf("EV resume %d %d %d %d\n", i, n, s, r);
    if
    :: st[i] == 0 -> skip                                   /* NOT_FOUND */
#ifndef NO_INCARNATION
    :: st[i] != 0 && n != inc[i] -> skip                    /* reopened: refused */
#endif
#ifdef SEED_GUARD
    :: else -> if
        :: lastblk[i] != NONE && blk[i] == lastblk[i] -> skip        /* "already resumed" */
#else
    :: else -> if
        :: lastres[i] >= 0 && s <= lastres[i] -> skip                /* duplicate */
#endif
        :: else -> if
            :: (resd[i] & (1 << r)) != 0 && s == sent[i] -> skip    /* this rank's repeat */
            :: else ->
                j_ = resd[i];                                 /* to restore, if refused */
#ifndef FIRST_RESUME
                resd[i] = resd[i] | (1 << r);
#else
                resd[i] = ALL_READERS;                        /* one rank speaks for all */
#endif
                if
                :: CAN_resume(i, s) ->
                    FIRE_resume(i, s);
                    assert(n == inc[i]);                        /* P6 */
                    assert(CONS(n, 0) == s && CONS(n, 1) == s); /* P3: every rank read it */
                    lastres[i] = s;
                    lastblk[i] = blk[i];
                    resd[i] = 0;
                    free_window(i);
                    wstart[i] = sent[i];
                    wtok[i] = 1;
                    start_waiting(i);
                    serve_waiting()
                :: !CAN_resume(i, s) && st[i] == TRANSFERRING && G_resume_is_due(i, s) ->
                    skip                                        /* recorded: others to come */
                :: else -> resd[i] = j_                         /* FAILED_PRECONDITION */
                fi;
                j_ = 0
            fi
        fi
    fi;
    report()
}

/* A write of incarnation n lands (its own writer, or late). */
inline land(n) {
    printf("EV land %d %d\n", n, pw_blk[n]);
    assert(owner[pw_blk[n]] == n || fence_inc[pw_blk[n]] == n);   /* P2 */
    data[pw_blk[n]] = TAG(n, pw_tok[n]);
    pw_on[n] = false;
    pw_late[n] = false
}

#define GRANTABLE(i, n) (inc[i] == n && (st[i] == TRANSFERRING || st[i] == RESUMING) \
    && blk[i] != NONE && sent[i] - wstart[i] < wtok[i] && lent[i] != wepoch[i])

/* The sender's Detach: lifts its window's fence, or takes back a live grant. */
inline detach(i, n, e) {
    printf("EV detach %d %d %d\n", i, n, e);
    if
    :: fence_epoch[0] == e && fence_inc[0] == n -> lift(0)
    :: fence_epoch[1] == e && fence_inc[1] == n -> lift(1)
    :: else -> if
        :: st[i] != 0 && inc[i] == n && lent[i] == e -> lent[i] = 0
        :: else -> skip
        fi
    fi;
    report()
}

proctype Sender(byte i; byte n) {
    byte e, t;
    bool ok;
    atomic {
        if
        :: inc[i] == n && st[i] == BOOTSTRAPPING ->
            printf("EV attach %d %d %d\n", i, n, total[i]); FIRE_attach(i, 0); report()
        :: else -> goto out
        fi
    }
    do
    :: atomic {
        GRANTABLE(i, n) ->
            lent[i] = wepoch[i];
            e = wepoch[i];
            t = sent[i];
            printf("EV grant %d %d %d %d\n", i, n, e, t);
            pw_on[n] = true;
            pw_blk[n] = blk[i];
            pw_tok[n] = t;
            report()
        };
        if
        :: atomic { land(n) }
        :: atomic { faults < plan ->   /* a write reported failed that may still land */
            faults++;
            pw_late[n] = true;
            if
            :: inc[i] == n && LIVE(st[i]) -> fail(i)   /* the sender aborts; it never detaches */
            :: else -> skip
            fi
           };
           goto out
        :: atomic { faults < plan -> faults++; pw_late[n] = true };   /* crash mid-write */
           goto out
        fi;
        atomic {
            printf("EV commit %d %d %d %d\n", i, n, e, t);
            ok = false;
            if
            :: st[i] == 0 || inc[i] != n -> skip                       /* NOT_FOUND / reopened */
            :: else -> if
                :: st[i] == FAILED -> lift_epoch(e)                     /* reaches the grant's end */
                :: else -> if
                    :: t + 1 <= sent[i] -> ok = true                    /* duplicate */
                    :: else -> if
                        :: e == wepoch[i] && lent[i] == e && t == sent[i] ->
                            lent[i] = 0;
                            deliver(i);
                            ok = true
                        :: else -> skip
                        fi
                    fi
                fi
            fi;
            report()
        };
        if
        :: !ok -> atomic { detach(i, n, e) }; goto out
        :: else -> skip
        fi
    :: atomic { !(inc[i] == n && LIVE(st[i])) -> goto out }   /* the Attach stream ended */
    od;
out:
    skip
}

/* The receiver of slot i, opening it `openings` times in turn. */
/* Rank r of opening n may read slot i's window: full, and not read by it yet. */
#define READABLE(i, n, r) (inc[i] == n && (st[i] == TRANSFERRING || st[i] == SUCCESS) \
    && blk[i] != NONE && sent[i] - wstart[i] == wtok[i] && sent[i] > CONS(n, r))

proctype Receiver(byte i; byte openings) {
    byte k = 0, n, m;
    bool read;
    do
    :: k == openings -> break
    :: else ->
        atomic {
            st[i] == 0 && nfree > 0 && !waiting[0] && !waiting[1] ->
                st[i] = BOOTSTRAPPING;
                inc[i] = nextinc;
                nextinc++;
                if
                :: i == 1 -> total[i] = TOTAL_Y
                :: i == 0 && k == 0 -> total[i] = TOTAL_X1
                :: else -> total[i] = TOTAL_X2
                fi;
                sent[i] = 0;
                wstart[i] = 0;
                wtok[i] = 1;
                lastres[i] = -1;
                lastblk[i] = NONE;
                resd[i] = 0;
                lent[i] = 0;
                wepoch[i] = nextepoch;
                nextepoch++;
                alloc_into(i);
                n = inc[i];
                printf("EV open %d %d\n", i, n);
                report();
                run Sender(i, n)
        };
        do
        :: atomic {
            (inc[i] == n && TERMINAL(st[i])
             && !(st[i] == SUCCESS && (sent[i] > CONS(n, 0) || sent[i] > CONS(n, 1)))) ->
                /* the last rank's Release: the blocks go once every rank released */
                printf("EV release %d %d\n", i, n);
                if
                :: st[i] == SUCCESS ->
                    assert(CONS(n, 0) == total[i] && CONS(n, 1) == total[i])   /* P3: all, once */
                :: else -> skip
                fi;
                free_window(i);
                st[i] = 0;
                serve_waiting();
                report();
                k++;
                break
           }
        :: atomic { (READABLE(i, n, 0) || READABLE(i, n, 1)) -> m = 0 };
           do
           :: m < RANKS ->
                atomic {   /* rank m reads the full window, if it has not yet */
                    if
                    :: READABLE(i, n, m) ->
                        printf("EV read %d %d %d %d\n", i, n, wstart[i], m);
                        assert(wstart[i] == CONS(n, m));                  /* P3: in order */
                        assert(data[blk[i]] == TAG(n, wstart[i]));        /* P3: its own row */
                        CONS(n, m) = sent[i];
                        read = (st[i] != SUCCESS);
                        report()
                    :: else -> read = false
                    fi
                };
                if
                :: read -> atomic {   /* then resumes it with the sent_tokens it saw */
                        (!bag_on[0] || !bag_on[1]) ->
                        if
                        :: !bag_on[0] -> j_ = 0
                        :: else -> j_ = 1
                        fi;
                        bag_on[j_] = true;
                        bag_slot[j_] = i;
                        bag_inc[j_] = n;
                        bag_sent[j_] = CONS(n, m);
                        bag_rank[j_] = m;
                        j_ = 0
                   }
                :: else -> skip
                fi;
                m++
           :: else -> break
           od
        od
    od;
    atomic { done++ }
}

/* Delivers resumes (in any order, any time later), lands late writes, lifts fences when their
 * timeout passes (never before a write in flight has landed: --fence-timeout outlasts any
 * write), and fires the stall timeout when nothing else can happen. */
proctype Network() {
    byte m;
end:
    do
    :: atomic {
        (bag_on[0] || bag_on[1]) ->
            if
            :: bag_on[0] -> m = 0
            :: bag_on[1] -> m = 1
            fi;
            bag_on[m] = false;
            resume(bag_slot[m], bag_inc[m], bag_sent[m], bag_rank[m]);
            m = 0
       }
    :: atomic { pw_late[1] -> land(1) }
    :: atomic { pw_late[2] -> land(2) }
    :: atomic { pw_late[3] -> land(3) }
    /* The fence timeout: fences fall due in the order they were made (one timeout for all). */
    :: atomic {
        (fence_epoch[0] != 0 && !pw_on[fence_inc[0]]
         && (fence_epoch[1] == 0 || fence_epoch[1] > fence_epoch[0])) ->
            printf("EV fencetimeout %d\n", fence_epoch[0]); lift(0); report()
       }
    :: atomic {
        (fence_epoch[1] != 0 && !pw_on[fence_inc[1]]
         && (fence_epoch[0] == 0 || fence_epoch[0] > fence_epoch[1])) ->
            printf("EV fencetimeout %d\n", fence_epoch[1]); lift(1); report()
       }
    :: atomic { faults < plan && LIVE(st[0]) -> faults++; fail(0) }   /* abort, stall, lease */
    :: atomic { faults < plan && LIVE(st[1]) -> faults++; fail(1) }
    :: atomic {
        timeout && (LIVE(st[0]) || LIVE(st[1])) ->
            assert(faults > 0);                            /* P7: no hang without a fault */
            if
            :: LIVE(st[0]) -> fail(0)
            :: else -> skip
            fi;
            if
            :: LIVE(st[1]) -> fail(1)
            :: else -> skip
            fi
       }
    od
}

init {
    atomic {
        if
        :: plan = 0
        :: plan = FAULTS
        fi;
        freestk[0] = 1;   /* block 0 on top */
        freestk[1] = 0;
        nfree = NB;
        blk[0] = NONE;
        blk[1] = NONE;
        run Network();
        run Receiver(0, 2);
        run Receiver(1, YOPEN)
    }
}

ltl finished { <> (done == 2) }
