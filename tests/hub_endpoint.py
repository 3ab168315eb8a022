"""A local, in-process Hub-compatible endpoint for the Hub tests: the only fake in them.

The real ``huggingface_hub`` client runs unchanged; ``install(hub)`` routes its HTTP client to this app through
``huggingface_hub.set_client_factory`` with an ``httpx`` ``MockTransport``, keeping the library's request hook (so
``HF_HUB_OFFLINE`` is still enforced by the library itself). Implemented, as the Hub answers them: repo create,
branch create, preupload (every file "regular"), commit (NDJSON), model info, model list (tag filter, search,
``cardData``/``siblings``), tree, and ``resolve`` (HEAD, GET, byte ranges). Errors carry the Hub's
``X-Error-Code`` headers, so the client raises its own exception types. Write calls need a token from ``tokens``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx2
import huggingface_hub
from huggingface_hub import ModelCard
from huggingface_hub.utils._http import hf_request_event_hook  # the library's own hook, kept on our client

HOST = "https://huggingface.co"
LICENSES = ("other", "mit", "apache-2.0", "openrail", "openrail++", "creativeml-openrail-m", "cc-by-4.0")
_REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> path -> bytes
    branches: dict[str, str] = field(default_factory=dict)  # branch -> sha

    def files(self, revision: str) -> dict[str, bytes] | None:
        sha = self.branches.get(revision, revision)
        return self.commits.get(sha)

    def sha(self, revision: str) -> str | None:
        sha = self.branches.get(revision, revision)
        return sha if sha in self.commits else None


@dataclass
class FakeHub:
    """Repos in memory, the requests it answered (``log``: method, path, [range]) and the tokens it accepts."""

    tokens: set[str] = field(default_factory=lambda: {"hf_test_write"})
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    # --------------------------------------------------------------------------------------------- helpers
    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = unquote(request.url.path)
        ranged = f" [{request.headers['range']}]" if "range" in request.headers else ""
        self.log.append(f"{request.method} {path}{ranged}")
        for method, pattern, handler in self._routes():
            m = re.fullmatch(pattern, path)
            if m and request.method in method:
                return handler(request, **m.groupdict())
        return _error(404, "Unhandled", f"fake hub has no route for {request.method} {path}")

    def _routes(self) -> list[tuple[tuple[str, ...], str, Any]]:
        return [
            (("POST",), r"/api/repos/create", self.create_repo),
            (("POST",), rf"/api/models/{_REPO}/branch/(?P<branch>.+)", self.create_branch),
            (("POST",), rf"/api/models/{_REPO}/preupload/(?P<rev>.+)", self.preupload),
            (("POST",), rf"/api/models/{_REPO}/commit/(?P<rev>.+)", self.commit),
            (("GET",), rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?", self.tree),
            (("GET",), rf"/api/models/{_REPO}(?:/revision/(?P<rev>.+))?", self.info),
            (("GET",), r"/api/models", self.list_models),
            (("GET",), r"/api/whoami-v2", self.whoami),
            (("POST",), r"/api/validate-yaml", self.validate_yaml),
            (("GET", "HEAD"), rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.resolve),
        ]

    def _authorized(self, request: httpx2.Request) -> bool:
        auth = request.headers.get("authorization", "")
        return auth.removeprefix("Bearer ") in self.tokens

    def _readable(self, request: httpx2.Request, repo_id: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized(request)):
            return None
        return repo

    def _card(self, files: dict[str, bytes]) -> dict[str, Any]:
        readme = files.get("README.md")
        return ModelCard(readme.decode()).data.to_dict() if readme else {}

    def _model(self, repo_id: str, repo: Repo, revision: str = "main") -> dict[str, Any]:
        files = repo.files(revision) or {}
        card = self._card(files)
        tags = list(card.get("tags") or [])
        tags += [card[k] for k in ("library_name", "pipeline_tag") if card.get(k)]
        tags += [f"license:{card['license']}"] if card.get("license") else []
        tags += [f"base_model:{card['base_model']}"] if card.get("base_model") else []
        return {
            "_id": repo_id,
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": repo.sha(revision),
            "private": repo.private,
            "tags": tags,
            "library_name": card.get("library_name"),
            "pipeline_tag": card.get("pipeline_tag"),
            "downloads": 0,
            "likes": 0,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "createdAt": "2026-01-01T00:00:00.000Z",
            "cardData": card,
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }

    # ------------------------------------------------------------------------------------------- routes
    def create_repo(self, request: httpx2.Request) -> httpx2.Response:
        if not self._authorized(request):
            return _error(401, None, "Invalid credentials in Authorization header")
        body = json.loads(request.content)
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if repo_id in self.repos:
            return _error(409, None, "You already created this model repo", url=f"{HOST}/{repo_id}")
        sha = _sha(repo_id.encode())
        self.repos[repo_id] = Repo(
            private=body.get("visibility", "public") != "public", commits={sha: {}}, branches={"main": sha}
        )
        return _json({"url": f"{HOST}/{repo_id}", "name": repo_id, "id": repo_id})

    def create_branch(self, request: httpx2.Request, repo: str, branch: str) -> httpx2.Response:
        if not self._authorized(request):
            return _error(401, None, "Invalid credentials in Authorization header")
        target = self.repos.get(repo)
        if target is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if branch in target.branches:
            return _error(409, None, "Reference already exists")
        target.branches[branch] = target.branches["main"]
        return _json({})

    def preupload(self, request: httpx2.Request, repo: str, rev: str) -> httpx2.Response:
        if not self._authorized(request):
            return _error(401, None, "Invalid credentials in Authorization header")
        if repo not in self.repos:
            return _error(404, "RepoNotFound", "Repository not found")
        files = json.loads(request.content)["files"]
        return _json(
            {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
        )

    def commit(self, request: httpx2.Request, repo: str, rev: str) -> httpx2.Response:
        if not self._authorized(request):
            return _error(401, None, "Invalid credentials in Authorization header")
        target = self.repos.get(repo)
        if target is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if rev not in target.branches:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = dict(target.commits[target.branches[rev]])
        for line in request.read().decode().splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            elif item["key"] == "deletedFile":
                files.pop(item["value"]["path"], None)
        sha = _sha(json.dumps(sorted((p, _sha(b)) for p, b in files.items())).encode() + rev.encode())
        target.commits[sha] = files
        target.branches[rev] = sha
        return _json({"commitUrl": f"{HOST}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    def info(self, request: httpx2.Request, repo: str, rev: str | None = None) -> httpx2.Response:
        target = self._readable(request, repo)
        if target is None:
            return _error(401, "RepoNotFound", "Repository not found")
        if target.sha(rev or "main") is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return _json(self._model(repo, target, rev or "main"))

    def tree(self, request: httpx2.Request, repo: str, rev: str, sub: str | None = None) -> httpx2.Response:
        target = self._readable(request, repo)
        if target is None:
            return _error(401, "RepoNotFound", "Repository not found")
        files = target.files(rev)
        if files is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        entries = [
            {"type": "file", "path": p, "size": len(b), "oid": _sha(b)}
            for p, b in sorted(files.items())
            if not sub or p.startswith(sub.rstrip("/") + "/")
        ]
        return _json(entries)

    def list_models(self, request: httpx2.Request) -> httpx2.Response:
        params = request.url.params
        wanted = params.get_list("filter")
        search = (params.get("search") or "").lower()
        limit = int(params.get("limit") or 1000)
        out = []
        for repo_id, repo in sorted(self.repos.items()):
            if repo.private and not self._authorized(request):
                continue
            model = self._model(repo_id, repo)
            if all(t in model["tags"] for t in wanted) and search in repo_id.lower():
                out.append(model)
        return _json(out[:limit])

    def validate_yaml(self, request: httpx2.Request) -> httpx2.Response:
        """Like the Hub: a card's base_model must be a repo id, its license a known id or "other"."""
        card = self._card({"README.md": json.loads(request.content)["content"].encode()})
        errors = []
        if card.get("base_model") and not re.fullmatch(r"[\w.-]+/[\w.-]+", card["base_model"]):
            errors.append({"message": f'"base_model" must be a Hub model id, got {card["base_model"]!r}'})
        if card.get("license") not in (None, *LICENSES):
            errors.append(
                {"message": f'"license" must be one of the Hub license ids, got {card["license"]!r}'}
            )
        if errors:
            return httpx2.Response(400, json={"errors": errors})
        return _json({"errors": [], "warnings": []})

    def whoami(self, request: httpx2.Request) -> httpx2.Response:
        if not self._authorized(request):
            return _error(401, None, "Invalid credentials in Authorization header")
        return _json({"type": "user", "name": "tester", "auth": {"accessToken": {"role": "write"}}})

    def resolve(self, request: httpx2.Request, repo: str, rev: str, file: str) -> httpx2.Response:
        target = self._readable(request, repo)
        if target is None:
            return _error(401, "RepoNotFound", "Repository not found")
        files = target.files(rev)
        if files is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if file not in files:
            return _error(404, "EntryNotFound", f"{file} does not exist on {rev}")
        data = files[file]
        headers = {"X-Repo-Commit": str(target.sha(rev)), "ETag": f'"{_sha(data)}"'}
        status = 200
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
        if ranged:
            start, end = int(ranged[1]), int(ranged[2] or len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            data, status = data[start : end + 1], 206
        headers["Content-Length"] = str(len(data))
        return httpx2.Response(status, headers=headers, content=b"" if request.method == "HEAD" else data)


def install(hub: FakeHub) -> None:
    """Route the real huggingface_hub client to ``hub`` (undo with ``uninstall``)."""
    huggingface_hub.set_client_factory(
        lambda: httpx2.Client(
            transport=httpx2.MockTransport(hub),
            event_hooks={"request": [hf_request_event_hook]},
            follow_redirects=True,
            timeout=None,
        )
    )


def uninstall() -> None:
    from huggingface_hub.utils._http import default_client_factory

    huggingface_hub.set_client_factory(default_client_factory)


def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _json(obj: Any) -> httpx2.Response:
    return httpx2.Response(200, json=obj)


def _error(status: int, code: str | None, message: str, **body: str) -> httpx2.Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return httpx2.Response(status, headers=headers, json={"error": message, **body})
