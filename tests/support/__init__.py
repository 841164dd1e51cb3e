"""Helpers the tests (and the benchmarks) share, imported normally as `tests.support.X`:

- `net`: free ports on 127.0.0.1 and waiting for a server to listen;
- `s3`: an S3-compatible server (moto's) on 127.0.0.1;
- `kube`: the stand-ins for the Kubernetes API server and the Determined master.
"""
