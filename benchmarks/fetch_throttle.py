"""A per-connection rate limit for the fetcher benchmark that does not reward new requests.

nginx's `limit_rate` paces each request by sleeping after every sendfile burst (`sendfile_max_chunk`,
2 MiB by default) for that burst's time at the rate, so the last burst of every request is free:
measured at 20 MB/s, a 2,000,000-byte range comes back at once, 4 MiB in 0.105 s (40 MB/s), 19 MB in
0.94 s. A tool that cuts files into more, smaller requests gets more than the "cap".

Here the kernel paces instead: SO_MAX_PACING_RATE on every socket nginx accepts (a tiny LD_PRELOAD shim
around accept/accept4, built with the system's C compiler). Linux then paces that TCP flow itself
(its internal pacing, no qdisc needed: this kernel has no sch_fq), at the same rate for the life of the
connection, whatever the requests on it. The only free bytes are TCP's first 10 segments of each new
connection (up to about 0.6 MB on loopback's 64 KiB MSS), i.e. per connection, not per request.
Nothing outside nginx's own sockets changes: no qdisc, nothing to restore."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>
#ifndef SO_MAX_PACING_RATE
#define SO_MAX_PACING_RATE 47
#endif
static unsigned int rate; /* bytes per second; read in the master before nginx clears its workers' env */
__attribute__((constructor)) static void init(void) {
    const char *s = getenv("FETCH_BENCH_PACING_RATE");
    rate = s ? (unsigned int)strtoul(s, 0, 10) : 0;
}
static int pace(int fd) {
    if (fd >= 0 && rate) setsockopt(fd, SOL_SOCKET, SO_MAX_PACING_RATE, &rate, sizeof rate);
    return fd;
}
int accept4(int fd, struct sockaddr *a, socklen_t *l, int flags) {
    static int (*real)(int, struct sockaddr *, socklen_t *, int);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    return pace(real(fd, a, l, flags));
}
int accept(int fd, struct sockaddr *a, socklen_t *l) {
    static int (*real)(int, struct sockaddr *, socklen_t *);
    if (!real) real = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    return pace(real(fd, a, l));
}
"""


def build_shim(workdir: Path) -> Path:
    """Compile the shim into `workdir`; needs cc (Debian: gcc)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("the pacing throttle needs a C compiler (cc); or run with --throttle nginx")
    src, lib = workdir / "pacing_shim.c", workdir / "pacing_shim.so"
    src.write_text(SHIM_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"], check=True)
    return lib


@contextlib.contextmanager
def preloaded(lib: Path, rate_bytes: int):
    """The shim in the environment of processes started inside the block (nginx), and only those."""
    saved = {k: os.environ.get(k) for k in ("LD_PRELOAD", "FETCH_BENCH_PACING_RATE")}
    os.environ["LD_PRELOAD"] = str(lib)
    os.environ["FETCH_BENCH_PACING_RATE"] = str(rate_bytes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def probe(url: str, nbytes: int) -> float:
    """Seconds for one new connection to fetch the first `nbytes` of `url` (a Range request)."""
    req = urllib.request.Request(url, headers={"Range": f"bytes=0-{nbytes - 1}"})
    t = time.monotonic()
    with urllib.request.urlopen(req) as r:
        got = 0
        while b := r.read(1 << 20):
            got += len(b)
    secs = time.monotonic() - t
    if got != nbytes:
        raise RuntimeError(f"throttle probe: got {got} bytes of {nbytes}")
    return secs
