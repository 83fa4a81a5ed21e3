"""`ntng publish` / `ntng book --publish`: put the built HTML book on a `gh-pages` branch and push it.

This is how Jupyter Book's own documentation publishes (`ghp-import -n -p -f _build/html`): ghp-import (pinned in
pyproject.toml) writes the site directory as one commit on the branch with `git fast-import`, so the working tree,
the index and the checked-out branch are never touched. The branch holds exactly the site: files removed from the
site disappear from the branch, while the branch keeps its history (one commit per publication). `.nojekyll` (`-n`)
is always added: GitHub Pages runs Jekyll otherwise, which hides every path starting with `_`, i.e. Sphinx's `_static/`
and `_images/`, and the pages would load without style or figures. GitHub Pages (Settings -> Pages -> Deploy from a
branch -> gh-pages, / (root)) or any static host serves the branch as it is.

Unlike Jupyter Book's recipe this never force-pushes: the remote's branch is fetched first and the new commit goes on
top of it, so a rejected push means someone published in between, and nothing of theirs is overwritten.

Everything that can be checked is checked before the commit (the site, the repository, the remote, the branch, a
committer identity); `ntng book --publish` checks it before the build, so a missing remote costs seconds, not a build.
ghp-import runs as a subprocess in the repository (its Python API works in the process's current directory and
lets git write to the terminal); git's output is kept and a failure becomes one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ntng.errors import RunError, UsageError

DEFAULT_REMOTE = "origin"
DEFAULT_BRANCH = "gh-pages"
DEFAULT_SITE = Path("_build") / "html"  # where `ntng book` builds, relative to its --out (the current directory)


def _git(repo: Path | None, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    except FileNotFoundError:
        raise UsageError("publishing needs git, which is not on PATH") from None


def _reason(proc: subprocess.CompletedProcess) -> str:
    """The line of git's (or ghp-import's) output that says what went wrong."""
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    for marker in ("! [", "fatal:", "error:"):  # a push's rejection (with git's why), then git's own failures
        found = [line for line in lines if line.startswith(marker)]
        if found:
            return found[0]
    return lines[-1] if lines else f"exit code {proc.returncode}"


@dataclass(frozen=True)
class Target:
    """Where a publication goes, checked: the repository's top folder, the remote (None: commit only), the branch,
    and the committer's identity as git itself resolves it."""

    repo: Path
    remote: str | None
    branch: str
    committer: tuple[str, str]


def check_target(repo: str | Path | None = None, remote: str | None = DEFAULT_REMOTE,
                 branch: str = DEFAULT_BRANCH) -> Target:
    """Refuse (UsageError) anything that would make a publication fail halfway: not a git repository, no such
    remote, a bad branch name, the branch checked out here, no committer identity. remote=None: commit only."""
    where = Path(repo) if repo is not None else Path.cwd()
    top = _git(where, "rev-parse", "--show-toplevel") if where.is_dir() else None
    if top is None or top.returncode != 0:
        raise UsageError(f"{where} is not in a git repository: publish from a clone of the project (the site goes "
                         f"to its branch {branch})")
    root = Path(top.stdout.strip())
    if _git(root, "check-ref-format", "--branch", branch).returncode != 0 or branch.startswith("-"):
        raise UsageError(f"bad branch name {branch!r}")
    current = _git(root, "symbolic-ref", "--quiet", "--short", "HEAD").stdout.strip()
    if branch == current:
        # fast-import would replace the checked-out branch's files with the site under the working tree
        raise UsageError(f"{branch} is the branch checked out in {root}: publish to a branch of its own "
                         f"(default {DEFAULT_BRANCH})")
    if remote is not None and remote not in _git(root, "remote").stdout.split():
        raise UsageError(f"no git remote {remote!r} in {root}: add one (git remote add {remote} URL) or name "
                         "another with --remote")
    ident = _git(root, "var", "GIT_COMMITTER_IDENT")
    if ident.returncode != 0:
        raise UsageError("git does not know who commits: set git config user.name and user.email (or "
                         "GIT_COMMITTER_NAME / GIT_COMMITTER_EMAIL)")
    # "Name <email> 1700000000 +0000": ghp-import reads only user.name/user.email, not git's other sources
    name, _, rest = ident.stdout.strip().partition(" <")
    return Target(root, remote, branch, (name, rest.partition(">")[0]))


def check_site(html_dir: str | Path) -> Path:
    """The built site, or a UsageError naming what is missing."""
    site = Path(html_dir)
    if not (site / "index.html").is_file():
        raise UsageError(f"no built site at {site} (no index.html): build it first (ntng book)")
    if (site / ".git").exists():  # a repository is not a site: its history would be published with it
        raise UsageError(f"{site} is a git repository, not a built site")
    return site.resolve()


def describe(site: Path, repo: Path) -> str:
    """The commit message: what was published, from which preset and which commit of the checkout."""
    what = "the ntng book"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # written by `ntng book` beside html/
        what += f" (preset {json.loads((site.parent / 'book.json').read_text())['preset']})"
    head = _git(repo, "rev-parse", "--short=12", "HEAD")
    if head.returncode == 0:
        what += f", built from {head.stdout.strip()}"
        if _git(repo, "status", "--porcelain", "--untracked-files=no").stdout.strip():
            what += " with uncommitted changes"
    return f"Publish {what}"


def publish_site(html_dir: str | Path = DEFAULT_SITE, remote: str = DEFAULT_REMOTE, branch: str = DEFAULT_BRANCH,
                 message: str | None = None, push: bool = True, repo: str | Path | None = None,
                 log=print) -> str:
    """Commit the built site `html_dir` as the new state of `branch` (with `.nojekyll`) in the git repository
    `repo` (default: the one around the current directory) with ghp-import, then push the branch to `remote`.
    Returns the commit's hash. push=False: commit only. A failure is a one-line UsageError (bad input, checked before
    anything is written) or RunError (git or the remote refused)."""
    site = check_site(html_dir)
    target = check_target(repo, remote if push else None, branch)
    message = message or describe(site, target.repo)
    if push:
        # the remote's branch as it is now, so that the new commit goes on top of what is published
        listed = _git(target.repo, "ls-remote", "--heads", remote, f"refs/heads/{branch}")
        if listed.returncode != 0:
            raise RunError(f"cannot reach the git remote {remote!r}: {_reason(listed)}")
        if listed.stdout.strip():
            fetched = _git(target.repo, "fetch", "--quiet", "--no-tags", remote,
                           f"+refs/heads/{branch}:refs/remotes/{remote}/{branch}")
            if fetched.returncode != 0:
                raise RunError(f"cannot fetch {branch} from {remote!r}: {_reason(fetched)}")
    env = {**os.environ, "GIT_COMMITTER_NAME": target.committer[0], "GIT_COMMITTER_EMAIL": target.committer[1]}
    proc = subprocess.run([sys.executable, "-m", "ghp_import", "--no-jekyll", "--remote", remote, "--branch", branch,
                           "--message", message, str(site)], cwd=target.repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or "Failed to process commit" in proc.stdout:
        if "No module named ghp_import" in proc.stderr:
            raise UsageError("ghp-import is not installed: pip install -e . (it is pinned in pyproject.toml)")
        raise RunError(f"ghp-import could not commit {site} to {branch}: {_reason(proc).removeprefix('ghp_import.py: ')}")
    commit = _git(target.repo, "rev-parse", f"refs/heads/{branch}").stdout.strip()
    log(f"committed {site} to branch {branch} ({commit[:12]}): {message}")
    if push:
        pushed = _git(target.repo, "push", remote, f"refs/heads/{branch}:refs/heads/{branch}")
        if pushed.returncode != 0:
            raise RunError(f"git push of {branch} to {remote!r} failed: {_reason(pushed)} (the site is committed on "
                           f"the local branch {branch}; publish again to retry)")
        url = _git(target.repo, "remote", "get-url", remote).stdout.strip()
        log(f"pushed {branch} to {remote} ({url}); on GitHub, serve it with Settings -> Pages -> Deploy from a branch "
            f"-> {branch}, / (root)")
    return commit
