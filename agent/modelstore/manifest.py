"""What the sync knows about local files without reading them.

The manifest maps every live version's files to the (size, ETag) they were verified
against, so an unchanged repository is recognised from one listing. A staging journal
does the same for a version being downloaded, so an interrupted sync resumes.
Both are private to the agent (mode 0600).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from agent.modelstore.checksum import DIGEST_SIZE, MD5

# rel path -> (size, etag) for one version
Files = dict[str, tuple[int, str]]
# rel path -> (etag, digest algorithm, {part index: digest}) of large objects partly downloaded
Parts = dict[str, tuple[str, str, dict[int, bytes]]]

FORMAT = 1


@dataclass
class Manifest:
    """The live versions of one model and their files."""

    model: str
    source: str = ""
    versions: dict[int, Files] = field(default_factory=dict)
    # Digest of the store's listing these versions were last found complete against
    # (empty while a sync changes them): the same listing again needs no parsing.
    listing: str = ""

    @classmethod
    def load(cls, path: Path, model: str) -> "Manifest":
        """Read the manifest; a missing or unreadable one is empty (everything re-verifies)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT or data.get("model") != model:
                return cls(model)
            versions = {
                int(v): {rel: (int(e[0]), str(e[1])) for rel, e in body["files"].items()}
                for v, body in data["versions"].items()
            }
            return cls(model, str(data.get("source", "")), versions, str(data.get("listing", "")))
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return cls(model)

    def save(self, path: Path) -> None:
        """Write atomically (temp file, fsync, rename), mode 0600."""
        data = {
            "format": FORMAT,
            "model": self.model,
            "source": self.source,
            "listing": self.listing,
            "versions": {
                str(v): {"files": {rel: [size, etag] for rel, (size, etag) in sorted(files.items())}}
                for v, files in sorted(self.versions.items())
            },
        }
        tmp = path.with_name(f"{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)


class Journal:
    """Append-only record of files verified in one staging directory.

    The header names the staging directory's inode: after a crash, that inode tells
    whether the directory is still staged or already went live. It also names the boot:
    files are not fsynced one by one, so after a reboot the entries prove nothing.
    Part lines record the parts of a large object already written and hashed, so an
    interrupted download resumes at the first missing part.
    """

    def __init__(self, path: Path, inode: int, boot: str, entries: Files | None = None, parts: Parts | None = None):
        self.path = path
        self.inode = inode
        self.entries: Files = dict(entries or {})
        self._lock = threading.Lock()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        lines = [json.dumps({"inode": inode, "boot": boot})] + [
            json.dumps({"rel": rel, "size": s, "etag": e}, ensure_ascii=False) for rel, (s, e) in self.entries.items()
        ] + [
            _part_line(rel, etag, i, digest, alg)
            for rel, (etag, alg, done) in (parts or {}).items() for i, digest in sorted(done.items())
        ]
        os.write(fd, ("\n".join(lines) + "\n").encode())
        os.fsync(fd)
        os.close(fd)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    @staticmethod
    def read(path: Path, boot: str) -> tuple[int, Files] | None:
        """(inode, entries) of a journal written during boot `boot`, or None; a torn
        last line is ignored."""
        try:
            lines = path.read_bytes().splitlines()
        except OSError:
            return None
        try:
            header = json.loads(lines[0])
            inode = int(header["inode"])
        except (IndexError, ValueError, KeyError, TypeError):
            return None
        if header.get("boot") != boot:
            return None
        entries: Files = {}
        for line in lines[1:]:
            try:
                item = json.loads(line)
                if "part" not in item:
                    entries[item["rel"]] = (int(item["size"]), str(item["etag"]))
            except (ValueError, KeyError, TypeError):
                continue
        return inode, entries

    @staticmethod
    def read_parts(path: Path) -> Parts:
        """Part lines of the journal (call after read() accepted its header)."""
        parts: Parts = {}
        try:
            lines = path.read_bytes().splitlines()[1:]
        except OSError:
            return parts
        for line in lines:
            try:
                item = json.loads(line)
                if "part" not in item:
                    continue
                rel, etag, index = item["rel"], str(item["etag"]), int(item["part"])
                if index < 0:  # drop_parts
                    parts.pop(rel, None)
                    continue
                alg = str(item.get("alg", MD5))
                digest = bytes.fromhex(item["md5"] if "md5" in item else item["digest"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn last line
            if len(digest) != DIGEST_SIZE.get(alg):
                continue
            known = parts.get(rel)
            if known is None or known[:2] != (etag, alg):
                known = parts[rel] = (etag, alg, {})
            known[2][index] = digest
        return parts

    def add_part(self, rel: str, etag: str, index: int, digest: bytes, alg: str) -> None:
        """Record one part of a multipart object written and hashed by `alg` (0-based index)."""
        line = _part_line(rel, etag, index, digest, alg) + "\n"
        with self._lock:
            if self._fd >= 0:
                os.write(self._fd, line.encode())

    def add(self, rel: str, size: int, etag: str) -> None:
        """Record one verified file."""
        line = json.dumps({"rel": rel, "size": size, "etag": etag}, ensure_ascii=False) + "\n"
        with self._lock:
            self.entries[rel] = (size, etag)
            os.write(self._fd, line.encode())

    def drop_parts(self, rel: str) -> None:
        """Forget the parts of `rel` (its file failed verification and is deleted)."""
        line = json.dumps({"rel": rel, "etag": "", "part": -1, "digest": ""}, ensure_ascii=False) + "\n"
        with self._lock:
            if self._fd >= 0:
                os.write(self._fd, line.encode())

    def close(self) -> None:
        """Close the journal's file descriptor."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _part_line(rel: str, etag: str, index: int, digest: bytes, alg: str) -> str:
    return json.dumps({"rel": rel, "etag": etag, "part": index, "alg": alg, "digest": digest.hex()}, ensure_ascii=False)
