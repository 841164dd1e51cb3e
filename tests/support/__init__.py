"""Helpers the tests (and the benchmarks) share, imported normally as `tests.support.X`:

- `net`: free ports on 127.0.0.1 and waiting for a server to listen;
- `s3`: an S3-compatible server (moto's) on 127.0.0.1;
- `servers`: nginx and small fault-injecting HTTP servers (files with Range, a Hugging Face Hub stand-in);
- `trees`: the fetcher's miniature checkpoint tree, a check that a copy matches it, staged byte counts;
- `readonly`: a folder a job cannot write, even as root;
- `corpus`: the preprocessor tests' documents and the ids they must give;
- `kube`: the stand-ins for the Kubernetes API server and the Determined master; `kube_scope` and
  `kube_rbac` the API server's front (namespaces, cluster-scoped kinds, discovery, RBAC and access reviews);
- `registry`: a real Docker registry on 127.0.0.1 and a minimal image pushed to it.
"""
