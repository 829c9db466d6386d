"""The data behind each figure of the book, one module per chapter.

Every experiment takes its sizes from :func:`mtgmm.runtime.by_preset`, so the same code
runs the quick preset (a 2-core CPU, the default) and the full preset (a GPU).
"""
