"""The demo: a generated world of facts, a small LM pretrained to know them, and its build.

Not part of the editing library: :mod:`editor_core` never imports it. The service uses it only
to build a model when none is configured, and then reads what the build wrote (model, editor,
canary file) like any user-provided files.
"""
