"""overcast: a virtual-machine cloud on QEMU/KVM."""
