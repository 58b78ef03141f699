"""API keys through a real server: every task route needs a valid key, and tenants never see each other."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from testkit import ServerProcess, b64, running_server, support_body

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-9876543210", "carol": "carol-from-env-5555"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("server")
    keys_file = folder / "api-keys"
    keys_file.write_text(f"# tenant:key\nalice:{KEYS['alice']}\nbob:{KEYS['bob']}\n")
    env = {"METANET_API_KEYS": f"carol:{KEYS['carol']}"}
    with running_server(folder / "data", "--api-keys-file", str(keys_file), env=env) as process:
        yield process


def as_tenant(server: ServerProcess, tenant: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {KEYS[tenant]}"} if tenant else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEYS["alice"]}],
    ids=["none", "wrong", "no-scheme"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/tasks/x/support"),
        ("POST", "/tasks/x/classify"),
        ("GET", "/tasks/x"),
        ("DELETE", "/tasks/x"),
        ("DELETE", "/tasks/x/labels/a"),
    ],
)
def test_task_routes_need_a_valid_key(server: ServerProcess, headers: dict, method: str, path: str) -> None:
    answer = httpx.request(method, server.url + path, headers=headers, json={"images": ["x" * 100]})
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "unauthorized"
    assert answer.headers["www-authenticate"] == "Bearer"


def test_health_and_metrics_need_no_key(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 200


def test_tenants_are_isolated(server: ServerProcess, tibetan) -> None:
    with (
        as_tenant(server, "alice") as alice,
        as_tenant(server, "bob") as bob,
        as_tenant(server, "carol") as carol,
    ):
        alice.post(
            "/tasks/shared/support",
            json=support_body([("alice-a", tibetan[0][0]), ("alice-b", tibetan[1][0])]),
        )
        assert bob.get("/tasks/shared").status_code == 404
        assert bob.post("/tasks/shared/classify", json={"images": [b64(tibetan[0][1])]}).status_code == 404
        assert bob.delete("/tasks/shared/labels/alice-a").status_code == 404
        assert bob.delete("/tasks/shared").status_code == 404

        answer = bob.post("/tasks/shared/support", json=support_body([("bob-z", tibetan[5][0])])).json()
        assert (answer["version"], answer["labels"]) == (1, ["bob-z"])  # bob's own task of the same name
        assert carol.get("/tasks/shared").status_code == 404  # key from the environment

        query = {"images": [b64(tibetan[0][1])], "top_k": 5}
        alice_labels = {
            r["label"]
            for r in alice.post("/tasks/shared/classify", json=query).json()["predictions"][0]["top_k"]
        }
        bob_labels = {
            r["label"]
            for r in bob.post("/tasks/shared/classify", json=query).json()["predictions"][0]["top_k"]
        }
        assert alice_labels == {"alice-a", "alice-b"} and bob_labels == {"bob-z"}
        assert [t["labels"] for t in bob.get("/tasks").json()["tasks"]] == [{"bob-z": 1}]
        assert carol.get("/tasks").json() == {"tasks": []}

        assert bob.delete("/tasks/shared").status_code == 200
        assert alice.get("/tasks/shared").json()["labels"] == {"alice-a": 1, "alice-b": 1}
