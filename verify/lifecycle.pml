/* Generated from kvferry.statemachine.lifecycle.TRANSITIONS by verify/generate.py:
 * do not edit; run `python -m verify.generate > verify/lifecycle.pml`. */

#define BOOTSTRAPPING 1
#define TRANSFERRING 2
#define RESUMING 3
#define SUCCESS 4
#define FAILED 5
#define TERMINAL(x) (x == SUCCESS || x == FAILED)
#define LIVE(x) (x != 0 && !TERMINAL(x))

/* attach: BOOTSTRAPPING -> TRANSFERRING */
#define CAN_attach(i, s) ((st[i] == BOOTSTRAPPING))
#define FIRE_attach(i, s) assert(CAN_attach(i, s)); st[i] = TRANSFERRING

/* resume: TRANSFERRING -> RESUMING */
#define CAN_resume(i, s) ((st[i] == TRANSFERRING) && (s == sent[i] && sent[i] - wstart[i] == wtok[i] && sent[i] < total[i]) && (resd[i] == ALL_READERS))
#define G_resume_is_due(i, s) (s == sent[i] && sent[i] - wstart[i] == wtok[i] && sent[i] < total[i])
#define G_every_reader_resumed(i, s) (resd[i] == ALL_READERS)
#define FIRE_resume(i, s) assert(CAN_resume(i, s)); st[i] = RESUMING

/* deliver: RESUMING -> TRANSFERRING */
#define CAN_deliver(i, s) ((st[i] == RESUMING))
#define FIRE_deliver(i, s) assert(CAN_deliver(i, s)); st[i] = TRANSFERRING

/* complete: TRANSFERRING -> SUCCESS */
#define CAN_complete(i, s) ((st[i] == TRANSFERRING) && (sent[i] == total[i]))
#define G_all_tokens_sent(i, s) (sent[i] == total[i])
#define FIRE_complete(i, s) assert(CAN_complete(i, s)); st[i] = SUCCESS

/* fail: BOOTSTRAPPING, TRANSFERRING, RESUMING -> FAILED */
#define CAN_fail(i, s) ((st[i] == BOOTSTRAPPING || st[i] == TRANSFERRING || st[i] == RESUMING))
#define FIRE_fail(i, s) assert(CAN_fail(i, s)); st[i] = FAILED
