"""Scripts of the 2D X-ray landmark detection bundle.

Submodules are imported explicitly as ``scripts.<module>`` (for example ``scripts.coords``,
``scripts.data``, ``scripts.transforms``); this package imports none of them itself, so importing one
module never pulls in the dependencies of the others.
"""
