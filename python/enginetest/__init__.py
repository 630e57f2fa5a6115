"""A fault-injecting engine for tests; it ships with nothing.

`python -m enginetest --socket PATH [engine flags]` runs the production engine
server (inference.main) with a torch-free backend that inverts images and obeys
fault commands sent per job in the call's metadata (see faults.KEY). It takes
the production engine's flags, and four of its own: --start-fault,
--start-delay, --step-delay and --job-faults.
"""
