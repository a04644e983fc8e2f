"""The toy domain: a generated world of fictional materials (world.py), the paper's parents trained
on it (build.py), and tiny random checkpoints for tests and benchmarks (tiny.py)."""
