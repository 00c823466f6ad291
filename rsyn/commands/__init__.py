"""Thin CLI functions, one module per command: parse options, call the stage.

Each module registers its command on `rsyn.cli.app` at import. Heavy libraries
(torch, faiss, spaCy) are imported inside the stage, never here, so `rsyn
--help` stays fast.
"""
