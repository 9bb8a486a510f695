"""lowlight.core: the foundation every other part imports and that imports none of them.

Errors with a fix (`errors`), the bundle format (`bundle`), safe output paths
(`fsio`). Only the standard library and numpy: the runtime ships it to the vehicle.
"""
