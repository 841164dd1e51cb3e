"""`invoke local`: the whole pipeline on one machine (tooling; not installed in any image)."""
