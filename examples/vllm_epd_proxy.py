"""An OpenAI-compatible proxy in front of one vLLM encoder instance and several language
instances, each language instance beside its own kvferry server (its pool).

    python examples/vllm_epd_proxy.py --port 8000 --encoder http://encoder:8100 \
        --language http://lang-a:8200=lang-a-kvferry:50051 \
        --language http://lang-b:8300=lang-b-kvferry:50051

For each chat request with an image (or video) the proxy picks a language instance (round
robin), asks the encoder to encode the request's media (``max_tokens: 1``) and to send the
embeddings to that instance's kvferry server (``ec_transfer_params.kvferry_target``), then
forwards the request to that instance and streams its answer back. The encoder's send starts
during its step, before it answers, so the language instance finds its sender waiting. Give the
encoder every language server in ``kvferry_targets`` (it refuses others). Requests without media,
and everything else (``/v1/models``, ``/health``), go to a language instance directly.

The answer carries ``x-kvferry-language``: the instance that served it. If the encoder fails, the
request still goes on: the language instance's ``kvferry_on_failure`` decides (encode locally,
or fail it). Needs aiohttp (vLLM installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger("kvferry.proxy")
MEDIA_PARTS = {"image_url", "input_image", "video_url", "image_embeds"}
# Hop-by-hop and length headers are the proxy's own to set; a body arrives decompressed.
NOT_FORWARDED = {"host", "content-length", "transfer-encoding", "connection", "keep-alive",
                 "content-encoding"}


@dataclass(frozen=True)
class Language:
    url: str  # the vLLM instance, http://host:port
    kvferry: str  # the kvferry server beside it, host:port


def has_media(body: dict[str, Any]) -> bool:
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and any(
                isinstance(part, dict) and part.get("type") in MEDIA_PARTS for part in content):
            return True
    return False


def encoder_request(body: dict[str, Any], language: Language) -> dict[str, Any]:
    """BODY as the encoder takes it: one token, no stream, its embeddings sent to LANGUAGE."""
    out = {k: v for k, v in body.items() if k not in ("stream", "stream_options", "n")}
    out.update(max_tokens=1, max_completion_tokens=1, stream=False,
               ec_transfer_params={"kvferry_target": language.kvferry})
    return out


class Proxy:
    def __init__(self, encoder: str, languages: list[Language],
                 timeout: aiohttp.ClientTimeout) -> None:
        self.encoder = encoder.rstrip("/")
        self.languages = languages
        self._next = itertools.cycle(languages)  # chats with media: round robin
        self._other = itertools.cycle(languages)  # everything else, apart from them
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def start(self, app: web.Application) -> None:
        self._session = aiohttp.ClientSession(timeout=self._timeout)

    async def stop(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the proxy is not started"
        return self._session

    async def chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": {"message": "the body is not JSON"}}, status=400)
        if not has_media(body):
            return await self._forward(request, next(self._other), body)
        language = next(self._next)
        params = await self._encode(body, language, request)
        if params:  # what the encoder published per image, as vLLM's connectors pass it on
            body = {**body, "ec_transfer_params": params}
        return await self._forward(request, language, body)

    async def passthrough(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        return await self._forward(request, next(self._other), body)

    async def _encode(self, body: dict[str, Any], language: Language,
                      request: web.Request) -> dict[str, Any] | None:
        """Have the encoder send BODY's embeddings to LANGUAGE's kvferry server; the
        ``ec_transfer_params`` of its answer."""
        try:
            async with self.session.post(f"{self.encoder}{request.path}",
                                         json=encoder_request(body, language),
                                         headers=_headers(request)) as r:
                if r.status != 200:
                    log.warning("encoder answered %d: %s; %s decides without it", r.status,
                                (await r.text())[:500], language.url)
                    return None
                answer = await r.json()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            log.warning("encoder unreachable (%s); %s decides without it", e, language.url)
            return None
        params = answer.get("ec_transfer_params") if isinstance(answer, dict) else None
        return params if isinstance(params, dict) else None

    async def _forward(self, request: web.Request, language: Language,
                       body: Any) -> web.StreamResponse:
        url = f"{language.url.rstrip('/')}{request.path_qs}"
        out: web.StreamResponse | None = None
        try:
            async with self.session.request(request.method, url, json=body,
                                            headers=_headers(request)) as r:
                out = web.StreamResponse(status=r.status, headers={
                    k: v for k, v in r.headers.items() if k.lower() not in NOT_FORWARDED})
                out.headers["x-kvferry-language"] = language.url
                await out.prepare(request)
                async for chunk in r.content.iter_any():
                    await out.write(chunk)
                await out.write_eof()
                return out
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            if out is not None and out.prepared:
                raise  # the answer had begun: nothing else can be said now
            return web.json_response({"error": {"message": f"the language instance "
                                                f"{language.url} did not answer: {e}"}},
                                     status=502, headers={"x-kvferry-language": language.url})


def _headers(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in NOT_FORWARDED}


def language_arg(text: str) -> Language:
    url, sep, kvferry = text.partition("=")
    if not sep or ":" not in kvferry or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give URL=KVFERRY, e.g. http://lang-a:8200=lang-a-kvferry:50051")
    return Language(url, kvferry)


def app(proxy: Proxy) -> web.Application:
    a = web.Application()
    a.on_startup.append(proxy.start)
    a.on_cleanup.append(proxy.stop)
    a.router.add_post("/v1/chat/completions", proxy.chat)
    a.router.add_route("*", "/{tail:.*}", proxy.passthrough)
    return a


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--encoder", required=True, help="the encoder instance, http://host:port")
    p.add_argument("--language", type=language_arg, action="append", required=True,
                   help="a language instance and its kvferry server: URL=HOST:PORT (repeat)")
    p.add_argument("--timeout", type=float, default=600,
                   help="seconds a request to an instance may take in all")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    proxy = Proxy(args.encoder, args.language, aiohttp.ClientTimeout(total=args.timeout))
    web.run_app(app(proxy), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
