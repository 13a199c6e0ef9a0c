"""A small client for the DashScope video API, for `wanserve generate` and `wanserve tasks`.

It talks to any server speaking the API (this one, or the hosted service) over HTTP only: nothing here
imports the server side except the model table (`catalog`), which says which endpoint a model is created
on and which input fields carry its media. Every failure is a `ClientError`, one line: the API's own code
and message, or what went wrong on the way (cannot connect, an answer that is not the API's).
"""

from __future__ import annotations

import mimetypes
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from .catalog.models import ModelSpec, find_model

DEFAULT_BASE_URL = "http://127.0.0.1:8000/api/v1"
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN")
_REMOTE_SCHEMES = ("http://", "https://", "oss://", "data:")


class ClientError(Exception):
    """One line for the user: `<code>: <message>` (the API's code, or the flag at fault), or the message
    alone where there is no code (the server could not be reached)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code, self.message = code, message


def api_base(url: str) -> str:
    """The API root from what a user passes: `http://host:8000` means `http://host:8000/api/v1` (the path
    the server prints and the SDK's DASHSCOPE_HTTP_BASE_URL carries)."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url if urlsplit(url).path else url + "/api/v1"


# ------------------------------------------------------------------------------------------- the request


@dataclass
class Generation:
    """What `wanserve generate` was asked for; `body(spec)` turns it into the model's create body."""

    model: str
    prompt: str | None = None
    negative_prompt: str | None = None
    image: str | None = None  # URLs, or oss:// keys once local files are uploaded
    last_frame: str | None = None
    audio: str | None = None
    template: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)  # only what the user set

    def media_flags(self) -> dict[str, str]:
        """The media inputs given, by the flag that gave them."""
        given = {"--image": self.image, "--last-frame": self.last_frame, "--audio": self.audio}
        return {flag: value for flag, value in given.items() if value}

    def body(self, spec: ModelSpec) -> dict[str, Any]:
        """The create body for `spec`: the input fields its kind reads (normalize.py on the server).
        Flags the model has no field for are refused here, naming the flag, rather than sent and ignored."""
        self.check(spec)
        inp: dict[str, Any] = {}
        if self.prompt is not None:
            inp["prompt"] = self.prompt
        if self.negative_prompt is not None:
            inp["negative_prompt"] = self.negative_prompt
        if self.template is not None:
            inp["template"] = self.template
        if spec.kind == "wan27":
            media = [("first_frame", self.image), ("last_frame", self.last_frame),
                     ("driving_audio", self.audio)]
            inp["media"] = [{"type": kind, "url": url} for kind, url in media if url]
        elif spec.kind == "kf2v":
            frames = (("first_frame_url", self.image), ("last_frame_url", self.last_frame))
            inp.update({name: url for name, url in frames if url})
        elif spec.kind == "i2v" and self.image:
            inp["img_url"] = self.image
        if spec.kind in ("t2v", "i2v") and self.audio:
            inp["audio_url"] = self.audio
        return {"model": self.model, "input": inp, "parameters": dict(self.parameters)}

    def check(self, spec: ModelSpec) -> None:
        """Refuse, naming the flag, what `spec` has no field for or cannot do without."""
        name, kind = spec.name, spec.kind
        if kind == "t2v" and (self.image or self.last_frame):
            raise ClientError("--image", f"{name} makes video from text alone; pick an image-to-video model "
                                         "(wanserve models) or leave out --image and --last-frame")
        if kind == "i2v" and self.last_frame:
            raise ClientError("--last-frame", f"{name} takes one image (--image); for first and last frames "
                                              "use a kf2v model or wan2.7-i2v")
        if kind in ("i2v", "kf2v", "wan27") and not self.image and not self.template:
            raise ClientError("--image", f"{name} needs a first frame: pass --image FILE or URL")
        if self.audio and kind in ("t2v", "i2v") and not spec.accepts_audio_url:
            raise ClientError("--audio", f"{name} makes silent video and takes no audio")
        if kind == "kf2v" and self.audio:
            raise ClientError("--audio", f"{name} takes no audio")
        if self.template and not spec.templates:
            raise ClientError("--template", f"{name} has no effect templates")
        if "size" in self.parameters and kind != "t2v":
            raise ClientError("--size", f"{name} takes --resolution ({', '.join(spec.resolutions)}); the "
                                        "video keeps the image's aspect ratio")
        if "resolution" in self.parameters and kind == "t2v":
            raise ClientError("--resolution", f"{name} takes --size, e.g. {spec.default_size}")


def endpoint_for(model: str) -> tuple[ModelSpec, str]:
    """The model's spec and the path it is created on. An unknown name is refused before anything is sent."""
    spec = find_model(model)
    if spec is None:
        raise ClientError("--model", f"{model!r} is not a Wan model wanserve knows; see `wanserve models`")
    return spec, f"/services/aigc/{spec.endpoint}/video-synthesis"


def is_local(value: str) -> bool:
    """A media flag names a local file unless it is a URL the server fetches itself."""
    return not value.startswith(_REMOTE_SCHEMES)


# -------------------------------------------------------------------------------------------- the client


class Client:
    """The API at `base_url` with `api_key`. Use as a context manager (one connection pool)."""

    def __init__(self, base_url: str, api_key: str, *, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = api_base(base_url)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                  headers={"Authorization": f"Bearer {api_key}"})

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    # -- the calls

    def create(self, gen: Generation) -> str:
        """Submit the task (uploading local media first); its task id."""
        spec, path = endpoint_for(gen.model)
        gen.check(spec)  # a flag the model cannot use is refused before any upload
        oss = False
        for attr in ("image", "last_frame", "audio"):
            value = getattr(gen, attr)
            if value and is_local(value):
                setattr(gen, attr, self.upload(gen.model, Path(value), flag=f"--{attr.replace('_', '-')}"))
                oss = True
        headers = {"X-DashScope-Async": "enable"}
        if oss:
            headers["X-DashScope-OssResourceResolve"] = "enable"
        out = self._call("POST", path, json=gen.body(spec), headers=headers)
        return out["output"]["task_id"]

    def upload(self, model: str, path: Path, *, flag: str = "file") -> str:
        """Upload a local file through the temporary-upload flow; its oss:// URL."""
        if not path.is_file():
            raise ClientError(flag, f"{path}: no such file (give a file path or an http(s):// URL)")
        policy = self._call("GET", "/uploads", params={"action": "getPolicy", "model": model})["data"]
        key = f"{policy['upload_dir']}/{path.name}"
        form = {"OSSAccessKeyId": policy["oss_access_key_id"], "Signature": policy["signature"],
                "policy": policy["policy"], "key": key, "x-oss-object-acl": policy["x_oss_object_acl"],
                "x-oss-forbid-overwrite": policy["x_oss_forbid_overwrite"], "success_action_status": "200"}
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        with path.open("rb") as fh:
            self._call("POST", policy["upload_host"], data=form, files={"file": (path.name, fh, ctype)},
                       auth=False)
        return f"oss://{key}"

    def task(self, task_id: str) -> dict[str, Any]:
        """GET /tasks/{id}: the whole answer (`output`, and `usage` once it succeeded)."""
        return self._call("GET", f"/tasks/{task_id}")

    def tasks(self, *, status: str | None = None, model: str | None = None, page: int = 1,
              page_size: int = 10) -> dict[str, Any]:
        params: dict[str, Any] = {"page_no": page, "page_size": page_size}
        if status:
            params["status"] = status
        if model:
            params["model_name"] = model
        return self._call("GET", "/tasks", params=params)

    def cancel(self, task_id: str) -> None:
        self._call("POST", f"/tasks/{task_id}/cancel")

    def wait(self, task_id: str, on_update: Callable[[dict[str, Any]], None], *, every: float = 1.0,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
        """Poll the task every `every` seconds, calling `on_update(output)` each time, until it ends; its
        last `output`."""
        while True:
            out = self.task(task_id)["output"]
            on_update(out)
            if out.get("task_status") in TERMINAL:
                return out
            sleep(every)

    def download(self, url: str, dest: Path) -> Path:
        """Stream the video at `url` (a signed link: no key sent) to `dest`, written whole or not at all."""
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self._send("GET", url, stream=True, auth=False) as r:
                self._check(r, read=True)
                with tmp.open("wb") as fh:
                    for block in r.iter_bytes(1 << 20):
                        fh.write(block)
            tmp.replace(dest)
        except OSError as exc:
            raise ClientError("-o", f"{dest}: cannot write the video ({exc.strerror or exc})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    # -- the wire

    def _call(self, method: str, url: str, *, auth: bool = True, **kw: Any) -> dict[str, Any]:
        r = self._send(method, url, auth=auth, **kw)
        self._check(r)
        try:
            return r.json()
        except ValueError:
            raise ClientError("BadResponse", f"{method} {r.url} answered {r.status_code} with no JSON body; "
                                             "is --base-url the API root (…/api/v1)?") from None

    def _send(self, method: str, url: str, *, auth: bool = True, stream: bool = False, **kw: Any) -> Any:
        request = self._http.build_request(method, url, **kw)
        if not auth:  # upload hosts and signed links carry their own credentials; the key stays here
            request.headers.pop("Authorization", None)
        try:
            if stream:
                return _Streamed(self._http, request)
            return self._http.send(request)
        except httpx.ConnectError as exc:
            raise ClientError("", _cannot_reach(request.url, exc)) from None
        except httpx.TimeoutException:
            raise ClientError("", f"{request.url.host}:{request.url.port} did not answer in time "
                                  f"({method} {request.url.path})") from None
        except httpx.HTTPError as exc:
            raise ClientError("", f"{method} {request.url}: {' '.join(str(exc).split())}") from None

    @staticmethod
    def _check(r: httpx.Response, read: bool = False) -> None:
        if r.status_code < 400:
            return
        if read:
            r.read()
        try:
            body = r.json()
            code, message = body.get("code"), body.get("message")
        except (ValueError, AttributeError):
            code = message = None
        if not code:
            raise ClientError(f"HTTP{r.status_code}", f"{r.request.method} {r.url.path}: "
                                                      f"{' '.join(r.text.split())[:200] or r.reason_phrase}")
        raise ClientError(str(code), " ".join(str(message).split()))


class _Streamed:
    """`with` a streamed send: connection errors become ClientErrors like the others."""

    def __init__(self, http: httpx.Client, request: httpx.Request) -> None:
        self.http, self.request = http, request
        self.response: httpx.Response | None = None

    def __enter__(self) -> httpx.Response:
        try:
            self.response = self.http.send(self.request, stream=True)
        except httpx.ConnectError as exc:
            raise ClientError("", _cannot_reach(self.request.url, exc)) from None
        return self.response

    def __exit__(self, *exc: object) -> None:
        if self.response is not None:
            self.response.close()


def _cannot_reach(url: httpx.URL, exc: Exception) -> str:
    root = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
    why = "connection refused" if "refused" in str(exc).lower() else " ".join(str(exc).split()) or "no answer"
    return f"cannot reach {root}: {why}; is the server running? (--base-url)"
