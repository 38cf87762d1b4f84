"""The demo model: synthetic clips, its training, an adherence scorer and an offline benchmark.

Submodules are imported on use (``videosys.demo.clips``, ``.scorer``, ``.eval``, ``.train``,
``.tokenizer``); importing this package loads nothing heavy.
"""
