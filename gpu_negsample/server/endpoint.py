"""Where a job's sampling server lives: local rank, job name, a private socket directory and
its result blocks (sealed memfds)."""
from __future__ import annotations

import fcntl
import functools
import hashlib
import mmap
import os
import re
import stat
import tempfile
from pathlib import Path

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


BLOCK_NAME = "gpu_negsample-block"  # what /proc/<pid>/fd shows of a block: "/memfd:gpu_negsample-block (deleted)"
# The seals a result block carries: no one, its creator included, can shrink it (a write
# past the end of a shrunk file would kill the server with SIGBUS) or change its seals.
BLOCK_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def create_block(size: int) -> int:
    """A result block of `size` bytes: a sealed memfd with its memory reserved; its fd.

    A memfd has no name in any directory (nothing to pre-create, collide with or leave behind
    when its processes die) and is not bound by the size of /dev/shm (Docker's default is
    64 MB). OSError when the memory cannot be reserved: a block only sized, not reserved,
    would kill whoever first touches a page the system cannot give."""
    fd = os.memfd_create(BLOCK_NAME, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.posix_fallocate(fd, 0, size)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, BLOCK_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mount_id(fd: int) -> int:
    """The id of the mount the file open as `fd` lies on (/proc/self/fdinfo)."""
    with open(f"/proc/self/fdinfo/{fd}") as info:
        for line in info:
            if line.startswith("mnt_id:"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/fdinfo/{fd} has no mnt_id")


@functools.cache
def _memfd_mount_id() -> int:
    """The mount every plain memfd lies on (the kernel's internal shmem mount)."""
    fd = os.memfd_create(BLOCK_NAME, os.MFD_CLOEXEC)
    try:
        return _mount_id(fd)
    finally:
        os.close(fd)


def open_block(client_pid: int, client_fd: int, size: int) -> mmap.mmap:
    """Map the result block a client holds open as fd `client_fd` (``create_block``), through
    /proc/<client_pid>/fd. Only a plain memfd sealed against shrinking, of the announced size
    and with that memory reserved, is mapped, so nothing the client does later (truncating it,
    say) can fault the server. ValueError says which check failed.

    The kernel lets this process open another's fd only where it could trace it (the same
    user). The path is first taken with O_PATH, which does not call the file's filesystem (a
    FUSE file whose daemon never answers an open would hang the server), and is opened for
    writing only once it is known to lie on the memfd mount, through that handle, so the
    file checked is the file mapped."""
    where = f"/proc/{client_pid}/fd/{client_fd}"
    not_a_block = f"{where} is not a result block: a block is a memfd sealed against shrinking, its memory " \
                  "reserved (endpoint.create_block)"
    try:
        handle = os.open(where, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        raise ValueError(f"cannot open the client's result block {where}: {e.strerror}") from None
    try:
        if _mount_id(handle) != _memfd_mount_id():
            raise ValueError(not_a_block)
        fd = os.open(f"/proc/self/fd/{handle}", os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    finally:
        os.close(handle)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or not fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_SHRINK:
            raise ValueError(not_a_block)
        if size <= 0 or info.st_size != size:
            raise ValueError(f"result block {where} has {info.st_size} bytes, not the announced {size}")
        if info.st_blocks * 512 < size:  # else a client could make the server map terabytes it never had
            raise ValueError(f"result block {where}: only {info.st_blocks * 512:,} of its {size:,} bytes are "
                             "reserved (posix_fallocate it, as endpoint.create_block does)")
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


PID_MAX_LIMIT = 1 << 22  # the kernel's ceiling on pid_max (64-bit): no process has a pid outside 1..this


def pid_alive(pid: int) -> bool:
    """Whether pid runs; a zombie (dead, not yet reaped by its parent) counts as dead, and so
    does a number no process can have (os.kill(-1, 0) would ask about every process)."""
    if not 0 < pid <= PID_MAX_LIMIT:
        return False
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
