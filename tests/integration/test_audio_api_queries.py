"""What the main API read costs the database, counted on real PostgreSQL: a fixed number of
queries whatever the number of jobs (no N+1), no COUNT(*) per page, then none at all while the
token and the page are cached, and one Redis command; a change shows at once, and a revoked
token stops at once."""

import pytest
import redis

from audio.models import Job, Rendition
from tests.factories import make_user, token_client

pytestmark = pytest.mark.django_db(transaction=True)


def add_jobs(user: object, count: int) -> None:
    for n in range(count):
        job = Job.objects.create(owner=user, preset="podcast", original_name=f"{n}.wav")
        for fmt in ("mp3", "aac", "opus"):
            Rendition.objects.create(job=job, format=fmt, content_type="audio/mpeg", file_name=fmt)


@pytest.mark.parametrize("jobs", [1, 25])
def test_the_job_list_costs_the_same_queries_for_1_or_25_jobs(jobs, django_assert_num_queries):
    user = make_user("reader")
    client = token_client(user)
    add_jobs(user, jobs)
    with django_assert_num_queries(3) as captured:  # the token, the page, its renditions
        first = client.get("/api/jobs/")
    assert not any("COUNT(" in q["sql"].upper() for q in captured.captured_queries)
    with django_assert_num_queries(0):  # the token and the page come from the cache
        again = client.get("/api/jobs/")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    page = again.json()
    assert len(page["results"]) == min(jobs, 20)
    assert all(len(job["renditions"]) == 3 for job in page["results"])
    assert (page["next"] is not None) == (jobs > 20)


def test_a_cached_read_is_one_redis_command_and_answers_as_the_viewset_does(monkeypatch) -> None:
    user = make_user("counted")
    client = token_client(user)
    add_jobs(user, 2)
    first = client.get("/api/jobs/")  # the viewset: authenticates, renders, caches
    commands: list[str] = []
    execute = redis.Redis.execute_command

    def counted(self: redis.Redis, *args: object, **options: object) -> object:
        commands.append(str(args[0]))
        return execute(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counted)
    again = client.get("/api/jobs/")
    assert commands == ["EVALSHA"]  # the token's owner, their version and page: one round trip
    assert again.status_code == first.status_code == 200
    assert again.content == first.content
    different = {
        name: (first.headers.get(name), again.headers.get(name))
        for name in {*first.headers, *again.headers} - {"X-Request-Id"}
        if first.headers.get(name) != again.headers.get(name)
    }
    assert not different


def test_a_cached_job_list_shows_a_change_at_once() -> None:
    user = make_user("watcher")
    client = token_client(user)
    add_jobs(user, 2)
    assert {j["status"] for j in client.get("/api/jobs/").json()["results"]} == {"queued"}
    job_id = client.get("/api/jobs/").json()["results"][0]["id"]  # served from the cache
    assert client.post(f"/api/jobs/{job_id}/cancel/").status_code == 200
    statuses = {j["id"]: j["status"] for j in client.get("/api/jobs/").json()["results"]}
    assert statuses[job_id] == "canceled"
    client.delete(f"/api/jobs/{job_id}/")
    assert job_id not in {j["id"] for j in client.get("/api/jobs/").json()["results"]}


def test_one_users_cached_list_is_never_anothers() -> None:
    owner, other = make_user("owner"), make_user("other")
    add_jobs(owner, 3)
    assert len(token_client(owner).get("/api/jobs/").json()["results"]) == 3
    assert token_client(other).get("/api/jobs/").json()["results"] == []


def test_cursor_pages_walk_every_job_once_newest_first() -> None:
    user = make_user("walker")
    client = token_client(user)
    add_jobs(user, 45)
    seen, url = [], "/api/jobs/"
    while url:
        page = client.get(url).json()
        seen += [job["id"] for job in page["results"]]
        url = page["next"]
    expected = [str(pk) for pk in Job.objects.filter(owner=user).values_list("pk", flat=True)]
    assert seen == expected and len(seen) == 45  # Job's ordering: newest first


def test_a_cached_token_stops_working_at_once_when_revoked() -> None:
    user = make_user("revoked")
    client = token_client(user)
    assert client.get("/api/jobs/").status_code == 200  # now cached
    user.set_password("another-pw-789!")
    user.save()  # a new password revokes every token
    assert client.get("/api/jobs/").status_code == 401


def test_a_cached_token_of_a_deactivated_user_stops_working_at_once() -> None:
    user = make_user("leaver")
    client = token_client(user)
    assert client.get("/api/jobs/").status_code == 200
    user.is_active = False
    user.save()
    assert client.get("/api/jobs/").status_code == 401


def test_the_cached_page_is_json_and_the_browsable_api_still_renders() -> None:
    user = make_user("browser")
    client = token_client(user)
    add_jobs(user, 1)
    first, cached = client.get("/api/jobs/"), client.get("/api/jobs/")
    assert cached["Content-Type"] == "application/json" and cached.content == first.content
    page = client.get("/api/jobs/", HTTP_ACCEPT="text/html")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
