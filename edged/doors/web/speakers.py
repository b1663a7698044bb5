"""Enrolled speakers over HTTP: `GET /v1/speakers`, `POST /v1/speakers` (multipart: `name`, one or
more `file` clips in any upload format), `DELETE /v1/speakers/{name}` (edged.service.speakers)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edged.doors.web.auth import Auth
from edged.doors.web.errors import BadInput, error_response
from edged.pipelines.speaker.enrolled import Enrolled
from edged.service import speakers
from edged.service.context import ServiceContext


def speaker_json(speaker: Enrolled) -> dict[str, Any]:
    """One enrolled speaker: name, seconds of speech and model, never the embedding."""
    return {"object": "speaker", "name": speaker.name, "seconds": round(speaker.seconds, 2), "model": speaker.model}


class SpeakersApi:
    """The enrolled-speaker routes of the HTTP door, under its API key."""

    def __init__(self, ctx: ServiceContext, auth: Auth) -> None:
        self._ctx = ctx
        self._auth = auth

    def routes(self) -> list[web.RouteDef]:
        """The aiohttp routes of this API."""
        return [web.get("/v1/speakers", self.list),
                web.post("/v1/speakers", self.enrol),
                web.delete("/v1/speakers/{name}", self.remove)]

    async def list(self, request: web.Request) -> web.Response:
        """GET /v1/speakers: the enrolled speakers by name."""
        try:
            self._auth.check_http(request)
            found = await speakers.enrolled(self._ctx)
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Speaker list")
        return web.json_response({"object": "list", "data": [speaker_json(s) for s in found]})

    async def enrol(self, request: web.Request) -> web.Response:
        """POST /v1/speakers (multipart: name, file...): enrol a speaker."""
        try:
            self._auth.check_http(request)
            if not request.content_type.startswith("multipart/"):
                raise BadInput("Send the speaker as multipart/form-data with `name` and `file` fields.")
            form = await request.post()
            uploads = [f for f in form.getall("file", []) if hasattr(f, "file")]
            if not uploads:
                raise BadInput("The request has no `file` field with a clip of the speaker's voice.")
            clips = [(str(getattr(f, "filename", "") or f"clip {i + 1}"), f.file.read()) for i, f in enumerate(uploads)]
            speaker = await speakers.enrol(self._ctx, str(form.get("name", "")), clips)
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Speaker enrolment")
        return web.json_response(speaker_json(speaker), status=201)

    async def remove(self, request: web.Request) -> web.Response:
        """DELETE /v1/speakers/{name}: forget an enrolled speaker."""
        name = request.match_info["name"]
        try:
            self._auth.check_http(request)
            await speakers.remove(self._ctx, name)
        except Exception as exc:  # noqa: BLE001 - one error map (errors.py)
            return error_response(exc, "Speaker removal")
        return web.json_response({"object": "speaker.deleted", "name": name.strip(), "deleted": True})
