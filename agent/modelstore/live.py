"""Putting a staged version live, and retiring the versions the store no longer has.

A live version directory is never written in place: a new version appears with one
rename, a changed one is swapped with renameat2(RENAME_EXCHANGE), a gone one disappears
with one rename before it is deleted. The manifest follows each change.
Everything here blocks (renames, syncfs, fsync) and runs in the sync's thread pool.
"""

from __future__ import annotations

import shutil

from agent import log as agent_log
from agent.modelstore.layout import ModelDir, flush_filesystem, fsync_dir, publish, retire
from agent.modelstore.listing import RemoteModel
from agent.modelstore.manifest import Files, Journal, Manifest

log = agent_log.get(__name__)


def publish_version(mdir: ModelDir, manifest: Manifest, version: int, want: Files, journal: Journal,
                    replace: bool) -> None:
    """Rename the verified staging directory of `version` into place and record it."""
    staging, live = mdir.staging(version), mdir.version(version)
    flush_filesystem(staging)
    graveyard = mdir.graveyard(version)
    displaced = publish(staging, live, graveyard)
    fsync_dir(mdir.root)
    manifest.versions[version] = want
    manifest.save(mdir.manifest)
    journal.close()
    mdir.journal(version).unlink(missing_ok=True)
    if displaced:
        shutil.rmtree(graveyard, ignore_errors=True)
    log.info("model_sync.version_live", model=mdir.root.name, version=version, replaced=replace, files=len(want))


def retire_gone(mdir: ModelDir, manifest: Manifest, remote: RemoteModel) -> list[int]:
    """Remove live versions the store no longer has, keeping at least one loadable;
    returns the versions removed."""
    live = mdir.live_versions()
    gone = [v for v in live if v not in remote.versions and v not in remote.uploading]
    survivors = [v for v in live if v in remote.versions]
    if not survivors and gone:
        keep = max(gone)
        gone.remove(keep)
        log.warning("model_sync.kept_last_version", model=mdir.root.name, version=keep,
                    reason="the store has no loadable version of this model")
    for v in gone:
        retire(mdir.version(v), mdir.graveyard(v))
        manifest.versions.pop(v, None)
    stale = [v for v in manifest.versions if v not in live or v in gone]
    for v in stale:
        manifest.versions.pop(v, None)
    if gone or stale:
        manifest.save(mdir.manifest)
    return gone
