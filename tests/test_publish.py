"""Publishing (`ntng publish`, `ntng book --publish`, `make publish`): a built site to a gh-pages branch with
ghp-import, pushed to a local bare repository standing in for GitHub. A tiny fake site, not the real book."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# git of a clean CI machine: no user or system configuration, an identity given by the environment only
GIT_ENV = {"GIT_AUTHOR_NAME": "Test Publisher", "GIT_AUTHOR_EMAIL": "publisher@example.com",
           "GIT_COMMITTER_NAME": "Test Publisher", "GIT_COMMITTER_EMAIL": "publisher@example.com",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}


def git(cwd: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, env={**os.environ, **GIT_ENV}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def run_cli(args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ntng.cli", *args], cwd=cwd, env={**os.environ, **GIT_ENV},
                          capture_output=True, text=True, timeout=120)


def write_site(root: Path, files: dict[str, str], preset: str = "cpu") -> Path:
    """A built site as `ntng book` leaves it: _build/html/ and _build/book.json beside it."""
    site = root / "_build" / "html"
    if site.exists():
        subprocess.run(["rm", "-rf", str(site)], check=True)
    for name, text in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(text)
    (root / "_build" / "book.json").write_text(json.dumps({"preset": preset}))
    return site


@pytest.fixture
def checkout(tmp_path):
    """A clone with one commit on main, its origin a bare repository, a built site under _build/ (git-ignored)."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(remote))
    repo = tmp_path / "repo"
    git(tmp_path, "init", "--quiet", "--initial-branch=main", str(repo))
    (repo / ".gitignore").write_text("_build/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "--quiet", "-m", "the project")
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "--quiet", "origin", "main")
    write_site(repo, {"index.html": "<h1>book</h1>", "_static/x.css": "h1 {}", "old.html": "old"})
    return repo, remote


def published_files(remote: Path, ref: str = "gh-pages") -> set[str]:
    return set(git(remote, "ls-tree", "-r", "--name-only", ref).splitlines())


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ntng: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_publish_pushes_the_site_with_nojekyll_and_says_what_it_is(checkout):
    repo, remote = checkout
    head = git(repo, "rev-parse", "--short=12", "HEAD")
    proc = run_cli(["publish"], repo)
    assert proc.returncode == 0, proc.stderr
    assert "pushed gh-pages to origin" in proc.stdout
    assert published_files(remote) == {".nojekyll", "index.html", "_static/x.css", "old.html"}
    assert git(remote, "show", "gh-pages:index.html") == "<h1>book</h1>"
    assert git(remote, "show", "gh-pages:.nojekyll") == ""
    message = git(remote, "log", "-1", "--format=%s", "gh-pages")
    assert message == f"Publish the ntng book (preset cpu), built from {head}"
    assert git(remote, "log", "-1", "--format=%cn <%ce>", "gh-pages") == "Test Publisher <publisher@example.com>"
    # the checkout is as it was: still on main, nothing staged or changed
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(repo, "status", "--porcelain") == ""
    assert git(remote, "rev-parse", "main") == git(repo, "rev-parse", "HEAD")


def test_a_second_publication_replaces_the_site_and_keeps_the_history(checkout):
    repo, remote = checkout
    assert run_cli(["publish"], repo).returncode == 0
    first = git(remote, "rev-parse", "gh-pages")
    write_site(repo, {"index.html": "<h1>book, again</h1>", "_static/x.css": "h1 {}", "new.html": "new"}, preset="smoke")
    proc = run_cli(["publish", "--message", "second"], repo)
    assert proc.returncode == 0, proc.stderr
    # ghp-import rewrites the whole tree (fast-import deleteall): a page gone from the site is gone from the branch
    assert published_files(remote) == {".nojekyll", "index.html", "_static/x.css", "new.html"}
    assert git(remote, "show", "gh-pages:index.html") == "<h1>book, again</h1>"
    assert git(remote, "log", "--format=%s", "gh-pages").splitlines()[0] == "second"
    assert git(remote, "rev-parse", "gh-pages^") == first  # a new commit on top, not a forced rewrite


def test_a_publication_from_elsewhere_is_built_on_not_overwritten(checkout, tmp_path):
    repo, remote = checkout
    assert run_cli(["publish"], repo).returncode == 0
    other = tmp_path / "other"
    git(tmp_path, "clone", "--quiet", str(remote), str(other))
    write_site(other, {"index.html": "from elsewhere"})
    assert run_cli(["publish", "--message", "elsewhere"], other).returncode == 0
    # this clone's origin/gh-pages is now stale: publishing fetches first, so the push is a fast-forward
    proc = run_cli(["publish", "--message", "here again"], repo)
    assert proc.returncode == 0, proc.stderr
    assert git(remote, "log", "--format=%s", "gh-pages").splitlines()[:2] == ["here again", "elsewhere"]


def test_publish_to_another_remote_and_branch(checkout, tmp_path):
    repo, _ = checkout
    mirror = tmp_path / "mirror.git"
    git(tmp_path, "init", "--quiet", "--bare", str(mirror))
    git(repo, "remote", "add", "static-host", str(mirror))
    proc = run_cli(["publish", "--remote", "static-host", "--branch", "site"], repo)
    assert proc.returncode == 0, proc.stderr
    assert "index.html" in published_files(mirror, "site")


def test_publish_site_returns_the_commit_and_can_commit_without_pushing(checkout, monkeypatch):
    from ntng.book.publish import publish_site

    repo, remote = checkout
    for name, value in GIT_ENV.items():
        monkeypatch.setenv(name, value)
    commit = publish_site(repo / "_build" / "html", push=False, repo=repo, message="local only", log=lambda m: None)
    assert git(repo, "rev-parse", "gh-pages") == commit
    assert git(repo, "log", "-1", "--format=%s", "gh-pages") == "local only"
    assert "gh-pages" not in git(remote, "branch", "--list")


def refused(repo: Path, args: list[str], exit_code: int, words: str) -> None:
    """The CLI fails with one line that says why, and publishes nothing."""
    proc = run_cli(args, repo)
    assert proc.returncode == exit_code, proc.stderr
    assert words in one_error_line(proc)
    assert subprocess.run(["git", "rev-parse", "--verify", "--quiet", "refs/heads/gh-pages"], cwd=repo,
                          capture_output=True).returncode != 0


def test_no_built_site_is_a_usage_error(checkout, tmp_path):
    repo, _ = checkout
    refused(repo, ["publish", "--site", str(tmp_path / "missing")], 2, "no built site at")
    (tmp_path / "empty").mkdir()
    refused(repo, ["publish", "--site", str(tmp_path / "empty")], 2, "no index.html")


def test_a_missing_remote_is_a_usage_error(checkout):
    repo, _ = checkout
    refused(repo, ["publish", "--remote", "nowhere"], 2, "no git remote 'nowhere'")


def test_outside_a_git_repository_is_a_usage_error(tmp_path):
    write_site(tmp_path / "plain", {"index.html": "x"})
    proc = run_cli(["publish"], tmp_path / "plain")
    assert proc.returncode == 2
    assert "is not in a git repository" in one_error_line(proc)


def test_the_checked_out_branch_is_refused(checkout):
    repo, _ = checkout
    proc = run_cli(["publish", "--branch", "main"], repo)
    assert proc.returncode == 2 and "is the branch checked out" in one_error_line(proc)
    assert git(repo, "ls-tree", "--name-only", "main") == ".gitignore"


def test_an_unreachable_remote_is_a_run_error(checkout, tmp_path):
    repo, _ = checkout
    git(repo, "remote", "set-url", "origin", str(tmp_path / "gone.git"))
    refused(repo, ["publish"], 1, "cannot reach the git remote 'origin'")


def test_a_rejected_push_is_one_line_and_keeps_the_local_commit(checkout):
    repo, remote = checkout
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pages are frozen' >&2\nexit 1\n")
    hook.chmod(0o755)
    proc = run_cli(["publish"], repo)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "git push of gh-pages to 'origin' failed" in line and "pre-receive hook declined" in line
    assert "publish again" in line
    assert "index.html" in published_files(repo)  # committed here, ready for the retry
    assert "gh-pages" not in git(remote, "branch", "--list")


def test_book_publish_checks_the_remote_before_building(checkout):
    repo, _ = checkout
    out = repo / "out"
    proc = run_cli(["book", "--preset", "smoke", "--records-only", "--out", str(out), "--publish", "--remote",
                    "nowhere"], repo)
    assert proc.returncode == 2 and "no git remote 'nowhere'" in one_error_line(proc)
    assert not out.exists()
    proc = run_cli(["book", "--preset", "smoke", "--out", str(out), "--branch", "site"], repo)
    assert proc.returncode == 2 and "go with --publish" in one_error_line(proc)
    assert not out.exists()


def test_publish_has_help(tmp_path):
    proc = run_cli(["publish", "--help"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: ntng publish")
    assert "--publish" in run_cli(["book", "--help"], tmp_path).stdout


def test_make_publish_builds_the_reference_book_then_publishes_it():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "ntng book --preset cpu --publish" in makefile.split("\npublish:", 1)[1].split("\n\n", 1)[0]
