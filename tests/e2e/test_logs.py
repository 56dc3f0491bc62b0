"""Logs an operator can follow: one request id from nginx's access log through web to the
worker's lines for the task the request enqueued, every line a JSON object naming the request,
user, task and job it belongs to."""

import json
import time

import httpx

from core.log_context import accept_request_id
from testing import signals
from tests.conftest import NativeStack
from tests.http_api import upload, wait_finished


def records(native_stack: NativeStack, service: str) -> list[dict]:
    """The service's JSON log lines of this test session (other lines: Celery's banner...)."""
    found = []
    for line in native_stack.log(service).splitlines():
        if line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_one_upload_is_followed_by_one_id_from_nginx_to_the_worker(
    native_stack: NativeStack, tmp_path
) -> None:
    account = native_stack.signup("traced")
    source = signals.write(tmp_path / "traced.wav", signals.program(3), "wav")
    with native_stack.client() as client:
        response = upload(client, account.auth, source)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert wait_finished(client, account.auth, job_id)["status"] == "done"
    rid = response.headers["x-request-id"]
    assert len(response.headers.get_list("x-request-id")) == 1

    deadline = time.monotonic() + 5  # nginx writes its access log at least once a second
    while not (edge := [r for r in records(native_stack, "nginx") if r["request_id"] == rid]):
        assert time.monotonic() < deadline, f"no nginx access line with request id {rid}"
        time.sleep(0.2)
    assert [(r["method"], r["uri"], r["status"]) for r in edge] == [("POST", "/api/jobs/", 202)]
    assert float(edge[0]["upstream_response_time"]) > 0

    web = [r for r in records(native_stack, "web") if r.get("request_id") == rid]
    created = [r for r in web if r["message"].startswith(f"job {job_id} created by user ")]
    assert len(created) == 1, [r["message"] for r in web]
    assert created[0]["message"].split()[5] == str(created[0]["user_id"])  # the token's user

    worker = [r for r in records(native_stack, "celery_worker") if r.get("request_id") == rid]
    done = [r for r in worker if r["message"].startswith(f"job {job_id}: done")]
    assert len(done) == 1, [r["message"] for r in worker]
    assert done[0]["job_id"] == job_id and done[0]["task_id"]
    assert done[0]["task_id"] in created[0]["message"]  # the task web enqueued


def test_a_client_cannot_choose_its_request_id(native_stack: NativeStack) -> None:
    with native_stack.client() as client:
        response = client.get("/healthz", headers={"X-Request-Id": "forged"})
    assert response.headers["x-request-id"] not in ("", "forged")  # nginx's own
    direct = f"http://127.0.0.1:{native_stack.env['WEB_PORT']}/healthz"
    for forged in ("x" * 65, "two words", "line\u2028break"):
        answer = httpx.get(direct, headers={"X-Request-Id": forged.encode()})
        assert answer.headers["x-request-id"] != forged
        assert len(answer.headers["x-request-id"]) == 32
    assert accept_request_id("0123abcd-ef") == "0123abcd-ef"
