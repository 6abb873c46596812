"""The server database's files: `server.db`, its `-wal` and `-shm`, 0600 in a 0700 directory.

The database holds every agent's secret hash and, until the agent acknowledges a create, that
runner's setup_script with its registration token: no other local user may read it. A directory or
file of ours with wider modes is tightened (and said once); one that is not ours, or a shared
directory such as /tmp (world-writable or sticky), is refused with the fix.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from shoes_vz.core.errors import ConfigError

log = logging.getLogger(__name__)
DIR_MODE = 0o700
FILE_MODE = 0o600
SIDE_FILES = ("-wal", "-shm", "-journal")


def secure_directory(directory: Path) -> None:
    """`directory` exists, is ours, and only we may enter it."""
    if not directory.exists():
        directory.mkdir(parents=True, mode=DIR_MODE)
        os.chmod(directory, DIR_MODE)  # mkdir's mode passes through the umask
        return
    st = directory.stat()
    fix = "give server.db_path a directory of its own that only the server's user may enter"
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"server: {directory} (server.db_path's directory) is not a directory")
    if st.st_mode & (stat.S_ISVTX | stat.S_IWOTH):
        raise ConfigError(f"server: the database's directory {directory} is shared with other users "
                          f"(mode {stat.filemode(st.st_mode)}): {fix}")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"server: the database's directory {directory} belongs to uid {st.st_uid}, not this "
                          f"user ({os.geteuid()}): {fix}")
    if stat.S_IMODE(st.st_mode) != DIR_MODE:
        os.chmod(directory, DIR_MODE)
        log.warning("server: the database's directory %s was %s; now %s (only this user may enter it)",
                    directory, stat.filemode(st.st_mode), stat.filemode(stat.S_IFDIR | DIR_MODE))


def secure_files(db: Path) -> None:
    """The database file exists (made 0600 before SQLite opens it, so its -wal and -shm, which SQLite
    makes with the database's mode, are 0600 too) and every file of it that exists is 0600."""
    secure_directory(db.parent)
    try:
        fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        os.close(fd)
    except FileExistsError:
        pass
    for path in (db, *(db.with_name(db.name + suffix) for suffix in SIDE_FILES)):
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"server: {path} is not a regular file (a link or device in place of the database)")
        if st.st_uid != os.geteuid():
            raise ConfigError(f"server: {path} belongs to uid {st.st_uid}, not this user ({os.geteuid()}): "
                              "the server must own its database")
        if stat.S_IMODE(st.st_mode) != FILE_MODE:
            os.chmod(path, FILE_MODE)
            log.warning("server: %s was %s; now %s", path, stat.filemode(st.st_mode),
                        stat.filemode(stat.S_IFREG | FILE_MODE))


__all__ = ["DIR_MODE", "FILE_MODE", "secure_directory", "secure_files"]


def backup(db: Path, dest: Path) -> int:
    """A consistent copy of `db` at `dest` while a server uses it (SQLite's online backup API: it
    copies the pages of one read transaction, the WAL's committed ones included), 0600 like the
    original; the number of runner rows it holds. `dest` appears whole or not at all."""
    import sqlite3

    if not db.is_file():
        raise ConfigError(f"no database at {db} (server.db_path, --db)")
    if dest.exists():
        raise ConfigError(f"{dest} exists: back up to a new file")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)  # never readable by others, not even briefly
    os.close(fd)
    try:
        src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        out = sqlite3.connect(tmp)
        try:
            src.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
            runners = int(out.execute("SELECT COUNT(*) FROM runners").fetchone()[0])
            ok = out.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            out.close()
            src.close()
        if ok != "ok":
            raise ConfigError(f"the backup of {db} failed its integrity check: {ok}")
        os.replace(tmp, dest)
    except sqlite3.Error as e:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot back up {db}: {e}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return runners
