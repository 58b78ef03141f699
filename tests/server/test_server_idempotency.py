"""Support calls with an ``Idempotency-Key`` over HTTP: a repeat answers the first call's result and writes
nothing, also when it comes after a SIGKILL of every server process and a restart (the key is stored
in the task store, in the write's transaction); the key with another request is refused."""

from __future__ import annotations

import httpx

from testkit import ServerProcess, support_body


def test_a_support_call_sent_again_after_sigkill_and_restart_is_stored_once(tmp_path, tibetan) -> None:
    server = ServerProcess(tmp_path / "data").start()
    try:
        body = support_body([("ka", tibetan[0][0]), ("kha", tibetan[1][0]), ("ka", tibetan[0][1])])
        key = {"Idempotency-Key": "3f1c9a4e-support-1"}
        with httpx.Client(base_url=server.url, timeout=120) as http:
            first = http.post("/tasks/once/support", json=body, headers=key)
            assert first.status_code == 200, first.text
            assert "Idempotent-Replayed" not in first.headers
        server.kill()  # as if the answer had been lost with the server
        server.start()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            again = http.post("/tasks/once/support", json=body, headers=key)
            assert again.status_code == 200, again.text
            assert again.json() == first.json() == {
                "task_id": "once",
                "version": 1,
                "num_examples": 3,
                "labels": ["ka", "kha"],
            }
            assert again.headers["Idempotent-Replayed"] == "true"
            task = http.get("/tasks/once").json()
            assert (task["version"], task["labels"]) == (1, {"ka": 2, "kha": 1})

            # The same key with another request is an error, and writes nothing.
            other = support_body([("ga", tibetan[2][0])])
            reused = http.post("/tasks/once/support", json=other, headers=key)
            assert reused.status_code == 409 and reused.json()["error"]["code"] == "idempotency_key_reused"
            elsewhere = http.post("/tasks/elsewhere/support", json=body, headers=key)
            assert elsewhere.status_code == 409
            assert http.get("/tasks/elsewhere").status_code == 404
            assert http.get("/tasks/once").json()["version"] == 1

            # A new key is a new write; a malformed key is refused before anything is done.
            fresh = http.post("/tasks/once/support", json=other, headers={"Idempotency-Key": "next"})
            assert fresh.json()["version"] == 2
            bad = http.post("/tasks/once/support", json=other, headers={"Idempotency-Key": "has space"})
            assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
            assert http.get("/info").json()["idempotency_ttl"] == 86400
    finally:
        server.stop()
