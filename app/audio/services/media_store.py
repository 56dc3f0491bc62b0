"""Where a job's files live once made. MEDIA_STORAGE=filesystem: in MEDIA_ROOT, which web, the
workers and nginx share (one host, or a shared volume). MEDIA_STORAGE=s3: in an S3-compatible
bucket (django-storages), so web and workers on different hosts share them; MEDIA_ROOT is then
each process's scratch space only. Keys are the files' paths under MEDIA_ROOT (jobs/<id>/<name>).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.http import Http404, HttpResponse, HttpResponseRedirect


def remote() -> bool:
    return settings.MEDIA_STORAGE == "s3"


def key(path: Path) -> str:
    return path.resolve().relative_to(Path(settings.MEDIA_ROOT).resolve()).as_posix()


def publish(path: Path) -> None:
    """A finished file, where every process finds it (nothing to do on a shared MEDIA_ROOT)."""
    if remote():
        with path.open("rb") as data:
            default_storage.save(key(path), File(data))


def fetch(path: Path) -> None:
    """A local copy of a published file (the worker reading a source another host received)."""
    if remote() and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with default_storage.open(key(path)) as data, path.open("wb") as out:
            shutil.copyfileobj(data, out)


def remove_local(directory: Path) -> None:
    """Drop a job's scratch copies (everything is in the bucket); MEDIA_ROOT itself is the store."""
    if remote():
        shutil.rmtree(directory, ignore_errors=True)


def remove(directory: Path) -> None:
    """Every file of a job, wherever it lives."""
    shutil.rmtree(directory, ignore_errors=True)
    if remote():
        prefix = key(directory)
        _dirs, files = default_storage.listdir(prefix)
        for name in files:
            default_storage.delete(f"{prefix}/{name}")


def download(path: Path, content_type: str, download_name: str | None = None) -> HttpResponse:
    """The response for a file whose permission Django has checked. Local: nginx sends the bytes
    (X-Accel-Redirect to the internal /protected-media/ location over MEDIA_ROOT). In the
    bucket: a redirect to a URL signed for a few minutes, for this file and this name only."""
    disposition = f'attachment; filename="{download_name}"' if download_name else None
    if remote():
        name = key(path)
        if not default_storage.exists(name):
            raise Http404
        parameters = {"ResponseContentType": content_type}
        if disposition:
            parameters["ResponseContentDisposition"] = disposition
        return HttpResponseRedirect(
            default_storage.url(name, parameters=parameters)  # type: ignore[call-arg]  # S3Storage
        )
    if not path.exists():
        raise Http404
    response = HttpResponse(content_type=content_type)
    response["X-Accel-Redirect"] = f"/protected-media/{key(path)}"
    if disposition:
        response["Content-Disposition"] = disposition
    return response
