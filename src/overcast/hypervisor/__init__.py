"""Running guests and their block images: QEMU, QMP, ``qemu-img``.

Imports only ``overcast.model``.
"""
