"""Where a job's sampling server lives: local rank, job name, a private socket directory and
the shared-memory names of its result blocks."""
from __future__ import annotations

import hashlib
import mmap
import os
import re
import secrets
import stat
import tempfile
from pathlib import Path

SHM_DIR = Path("/dev/shm")
# A job name is at most 40 + 1 + 16 characters, so the socket path stays well inside the
# 107 bytes an AF_UNIX address holds; 64 bits of digest make an accidental meeting of two
# jobs' names (birthday bound over the jobs of one machine) negligible.
JOB_PREFIX_CHARS = 40
JOB_DIGEST_CHARS = 16


def _rank_variable(var: str) -> int | None:
    """The rank an environment variable gives (None when unset or empty); ValueError naming
    the variable when it is not a number."""
    value = os.environ.get(var, "").strip()
    if not value:
        return None
    if not (value.isdigit() and value.isascii()):
        raise ValueError(f"{var}={value!r} is not a rank: the launcher sets it to a number (0, 1, ...); "
                         "set it so, or unset it")
    return int(value)


def local_rank() -> int:
    """RecIS's LOCAL_PROCESS_RANK, else torchrun's LOCAL_RANK, else 0."""
    for var in ("LOCAL_PROCESS_RANK", "LOCAL_RANK"):
        rank = _rank_variable(var)
        if rank is not None:
            return rank
    return 0


def global_rank() -> int:
    """RANK where the launcher sets it (the rank a client's random stream is derived from)."""
    rank = _rank_variable("RANK")
    return local_rank() if rank is None else rank


RANK_VARIABLES = ("LOCAL_PROCESS_RANK", "LOCAL_RANK", "RANK")


def ranks_by_process_group(name: str | None = None) -> bool:
    """Whether this process finds its job by process group: a rank variable set by hand, with no
    name= and no launcher variables (TORCHELASTIC_RUN_ID, MASTER_PORT) to name the job."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return not name and not (run_id and run_id != "none") and not os.environ.get("MASTER_PORT", "") \
        and any(os.environ.get(var, "").strip() for var in RANK_VARIABLES)


def process_group_peers() -> list[int]:
    """The other live processes of this process's group (the ranks a hand-started job may have)."""
    group, peers = os.getpgrp(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == group and fields[0] not in (b"Z", b"X"):
            peers.append(int(entry))
    return peers


def job_name(name: str | None = None) -> str:
    """An explicit name, else torchrun's run id, else its master address and port, else (ranks
    whose LOCAL_RANK / RANK was set by hand) the process group, else this process.

    Ranks started by the same command share its process group (a shell gives each command
    line its own; multiprocessing and subprocess children inherit it), so ranks a script
    starts itself find one server without a name. Two jobs on one machine differ in one of
    these, and different inputs always give different
    names: a readable prefix (characters a path may hold, cut to 40) and a digest of the whole
    input, so ``a/b``, ``a b`` and ``a_b``, or two 100-character Kubernetes service names that
    differ only at the end, never share a server."""
    if name:
        source = f"name={name}"
    else:
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
        port = os.environ.get("MASTER_PORT", "")
        if run_id and run_id != "none":
            name, source = f"run-{run_id}", f"run_id={run_id}"
        elif port:
            addr = os.environ.get("MASTER_ADDR", "local")
            name, source = f"{addr}-{port}", f"master={addr}:{port}"
        elif ranks_by_process_group():
            name = source = f"pgid{os.getpgrp()}"
        else:
            name = source = f"pid{os.getpid()}"
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:JOB_PREFIX_CHARS]
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:JOB_DIGEST_CHARS]
    return f"{readable}-{digest}"


class UnsafePathError(PermissionError):
    """A job's directory or socket that another user could control: never connected to."""


def check_private(path: Path, kind: str) -> None:
    """Refuse `path` unless it is a `kind` ("directory" or "socket") of this user with no access
    for anyone else, looked at with lstat so a symlink is refused, not followed: a directory
    another local user made under a shared temp dir could hold their fake server."""
    info = path.lstat()
    is_kind = stat.S_ISDIR(info.st_mode) if kind == "directory" else stat.S_ISSOCK(info.st_mode)
    mode = stat.S_IMODE(info.st_mode)
    problems = []
    if not is_kind:
        problems.append("a symlink" if stat.S_ISLNK(info.st_mode) else f"not a {kind}")
    if info.st_uid != os.getuid():
        problems.append(f"owned by uid {info.st_uid}")
    if mode & 0o077:
        problems.append(f"mode {mode:04o}")
    if problems:
        wanted = "0700" if kind == "directory" else "0600"
        raise UnsafePathError(
            f"{path} is {', '.join(problems)}; the sampling server's {kind} must be a {kind} of uid {os.getuid()} "
            f"with mode {wanted} (another local user could run a fake server there). Remove it if it is yours, "
            "or set XDG_RUNTIME_DIR to a private directory, or give the job another name=")


def _private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    check_private(path, "directory")
    return path


def job_dir(job: str, create: bool = True) -> Path:
    """The job's 0700 directory (its socket lives there), under $XDG_RUNTIME_DIR or the temp dir.
    The server's starter creates it (and checks an existing one is private); clients only look."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.access(base, os.W_OK):
        base = tempfile.gettempdir()
    path = Path(base) / f"gpu_negsample-{os.getuid()}" / job
    return _private_dir(_private_dir(path.parent) / job) if create else path


def check_job_path(directory: Path) -> None:
    """Every rank's check before it connects: the per-user directory, the job's directory and
    its socket (which must exist) belong to this user and no one else."""
    check_private(directory.parent, "directory")
    check_private(directory, "directory")
    check_private(socket_path(directory), "socket")


def remove_empty_dirs(directory: Path) -> None:
    """Remove the job directory and the per-user one above it where they are empty (and the
    socket and pid file a killed server left behind, unless that server still runs)."""
    if live_server_pid(directory) is None:
        socket_path(directory).unlink(missing_ok=True)
        pid_path(directory).unlink(missing_ok=True)
    for path in (directory, directory.parent):
        try:
            path.rmdir()
        except FileNotFoundError:
            continue  # the server removed its own directory
        except OSError:
            return  # not empty: another job's, or not ours to remove


def socket_path(directory: Path) -> Path:
    return directory / "server.sock"


def pid_path(directory: Path) -> Path:
    return directory / "server.pid"


EXIT_JOB_TAKEN = 3  # a server's exit status when another live server already serves its job


class JobTakenError(RuntimeError):
    """Another live server already serves the job: this one must not bind over its socket."""


def live_server_pid(directory: Path) -> int | None:
    """The pid of the job's running server, from its pid file ("pid start-time"); None when
    there is none: that pid is gone, or now names a process that started at another time
    (the pid of a killed server, reused)."""
    try:
        fields = pid_path(directory).read_text().split()
    except OSError:
        return None
    if not fields or not fields[0].isdigit() or not pid_alive(int(fields[0])):
        return None
    pid = int(fields[0])
    started = start_time(pid)
    return None if len(fields) > 1 and started is not None and started != fields[1] else pid


def start_time(pid: int) -> str | None:
    """When pid started (field 22 of /proc/<pid>/stat, clock ticks since boot): with the
    pid it names one process, never a later one given the same pid. None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def claim_job(directory: Path) -> None:
    """Record this process as the job's server; JobTakenError when a live server already serves
    it (binding over its socket would silently cut its clients off)."""
    path = pid_path(directory)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            pid = live_server_pid(directory)
            if pid is not None:
                raise JobTakenError(f"job {directory.name!r} already has a sampling server (pid {pid})") from None
            path.unlink(missing_ok=True)  # left by a server that was killed
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {start_time(os.getpid()) or ''}".strip())
        return
    raise RuntimeError(f"could not claim {path}")


def shm_prefix(job: str) -> str:
    """The start of every result block name of this user's job."""
    return f"gpu_negsample-{os.getuid()}-{job}-"


_BLOCK_SUFFIX = re.compile(r"(\d+)-(\d+)-([0-9a-f]{16})")  # pid-serial-token: no field holds a "-"


def parse_block_name(job: str, name: str) -> tuple[int, int] | None:
    """(creator pid, serial) of one of the job's block names, else None. The part after the
    prefix must be exactly pid-serial-token, so job "train" never claims a block of job
    "train-31999" (whose names continue "31999-pid-serial-token")."""
    prefix = shm_prefix(job)
    match = _BLOCK_SUFFIX.fullmatch(name[len(prefix):]) if name.startswith(prefix) else None
    return (int(match[1]), int(match[2])) if match else None


def create_block(job: str, pid: int, serial: int, size: int) -> tuple[int, Path]:
    """Create one of the job's result blocks, 0600, with its memory reserved: (fd, path).
    The name ends in a random token (another user cannot pre-create it; a clash retries).
    OSError(ENOSPC) when /dev/shm has no room for it (Docker's default is 64 MB): a block
    that is only sized, not reserved, kills whoever first touches a page that is not there."""
    for _ in range(8):
        path = SHM_DIR / f"{shm_prefix(job)}{pid}-{serial}-{secrets.token_hex(8)}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        try:
            os.posix_fallocate(fd, 0, size)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        return fd, path
    raise FileExistsError(f"could not create a result block in {SHM_DIR}: 8 random names were taken")


def open_block(job: str, client_pid: int, path: str, size: int) -> mmap.mmap:
    """Map a result block a client created (``create_block``), accepting only the job's own
    blocks of that client: a regular file under /dev/shm with the job's name, not a link,
    owned by this user and of the announced size, with its memory reserved. ValueError says
    which check failed; OSError(ENOSPC) when /dev/shm has no room for it."""
    where = Path(path)
    if where.parent != SHM_DIR or parse_block_name(job, where.name) is None:
        raise ValueError(f"{path!r} is not a result block of job {job!r} (expected {SHM_DIR}/{shm_prefix(job)}...)")
    if parse_block_name(job, where.name)[0] != client_pid:
        raise ValueError(f"{path!r} was not created by this client (pid {client_pid})")
    try:
        fd = os.open(where, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise ValueError(f"cannot open result block {path!r}: {e.strerror} (a link, or gone)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise ValueError(f"result block {path!r} must be a regular file of uid {os.geteuid()}; it is "
                             f"{stat.filemode(info.st_mode)} of uid {info.st_uid}")
        if size <= 0 or info.st_size != size:
            raise ValueError(f"result block {path!r} has {info.st_size} bytes, not the announced {size}")
        os.posix_fallocate(fd, 0, size)  # the client's reservation, made sure of: no page is missing later
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def mapped_size(memory: mmap.mmap) -> int:
    """The block's size now (fstat of the mapped file): a client may have truncated it, and
    writing past the end of the file would kill this process with SIGBUS."""
    try:
        return memory.size()
    except OSError:
        return 0


def pid_alive(pid: int) -> bool:
    """Whether pid runs; a zombie (dead, not yet reaped by its parent) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def sweep_stale_blocks(job: str) -> int:
    """Remove result blocks of this job whose creating process is gone (a client killed in the
    moment between creating a block and handing it over). Returns how many were removed."""
    removed = 0
    for path in SHM_DIR.glob(f"{shm_prefix(job)}*"):
        parsed = parse_block_name(job, path.name)
        if parsed is not None and not pid_alive(parsed[0]):
            path.unlink(missing_ok=True)
            removed += 1
    return removed
