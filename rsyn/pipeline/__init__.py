"""The whole pipeline on one machine or a cluster: a pipeline file, its pass graph, planners and engines.

    rsyn plan pipeline.toml --emit make|slurm -o DIR     # a Makefile or sbatch job arrays
    rsyn run pipeline.toml --engine local|ray            # run it here or on a Ray cluster

See docs/running.md.
"""
