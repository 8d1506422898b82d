#!/usr/bin/env bash
# Builds the overcast test guest from Debian packages, without loop devices,
# mounts or network (except installing linux-image-amd64 when no kernel with
# modules is present).
#
#   bash scripts/build-guest.sh [OUTDIR]      # default: build/guest
#
# Outputs in OUTDIR:
#   guest.img      32 MiB raw BIOS disk: syslinux MBR, one bootable FAT16
#                  partition at 1 MiB holding syslinux, the kernel and initrd
#   guest.img.gz   the same, gzipped (what a library drive is imaged from)
#   vmlinuz, initrd.img, cmdline
#                  for direct kernel boot (-kernel/-initrd/-append) in tests
#
# The guest's behaviour (serial markers, power button, self power-off) lives
# in guest/init; its kernel command line in guest/syslinux.cfg.  The build is
# skipped when OUTDIR/inputs matches the inputs (this script, guest/*, the
# kernel, its modules.dep, busybox: names, sizes, mtimes and ctimes), so a
# second run costs milliseconds; any change to them rebuilds.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
outdir=${1:-$here/build/guest}
guest=$here/guest

# Modules the guest loads, in this order (button and evdev first, so that the
# power button works as early as possible); their dependencies come from
# modules.dep and are loaded before each.
MODULES=(
    button evdev
    virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
    virtio_blk failover net_failover virtio_net
    e1000 e1000e 8139cp 8139too
    libata ata_piix libahci ahci scsi_mod sd_mod sr_mod
    virtio_scsi sym53c8xx
)
BUSYBOX=/bin/busybox
MBR=/usr/lib/syslinux/mbr/mbr.bin
DISK_MIB=32
PART_START=2048 # sectors: the partition starts at 1 MiB

die() {
    echo "build-guest: $*" >&2
    exit 1
}

# Newest kernel (by version) whose modules are installed: the machine's own
# running kernel may have none.
pick_kernel() {
    local k v
    for k in /boot/vmlinuz-*; do
        [[ -f $k ]] || continue
        v=${k#/boot/vmlinuz-}
        [[ -f /lib/modules/$v/modules.dep ]] && echo "$v"
    done | sort -V | tail -n 1
}

kver=$(pick_kernel)
if [[ -z $kver ]]; then
    [[ $(id -u) -eq 0 ]] || die "no /boot/vmlinuz-* with /lib/modules; install linux-image-amd64"
    echo "build-guest: installing linux-image-amd64"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends linux-image-amd64
    kver=$(pick_kernel)
    [[ -n $kver ]] || die "linux-image-amd64 installed no kernel with modules"
fi
kernel=/boot/vmlinuz-$kver
moddir=/lib/modules/$kver
[[ -x $BUSYBOX ]] || die "$BUSYBOX is missing: install busybox-static"

inputs=("$here/scripts/build-guest.sh" "$guest"/* "$kernel" "$moddir/modules.dep" "$BUSYBOX")
outputs=(guest.img guest.img.gz vmlinuz initrd.img cmdline)

fingerprint() {
    echo "kernel $kver"
    echo "modules ${MODULES[*]}"
    stat -L -c '%n %s %Y %Z' "${inputs[@]}"
}

up_to_date() {
    local f
    for f in "${outputs[@]}"; do
        [[ -f $outdir/$f ]] || return 1
    done
    [[ -f $outdir/inputs ]] && [[ $(fingerprint) == "$(<"$outdir/inputs")" ]]
}

if up_to_date; then
    exit 0
fi

# Serialise concurrent builds (setup and a test may both ask); the loser finds
# the winner's outputs up to date.
mkdir -p "$outdir"
exec 9>"$outdir/.lock"
flock 9
if up_to_date; then
    exit 0
fi

for tool in cpio gzip mkfs.vfat mcopy syslinux sfdisk; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/setup.sh"
done
[[ -f $MBR ]] || die "$MBR is missing: install syslinux-common"
if ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is dynamically linked: install busybox-static"
fi

started=$EPOCHREALTIME
work=$(mktemp -d "$outdir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- initramfs ----------------------------------------------------------------

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,etc,tmp,lib/modules}
cp "$BUSYBOX" "$root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [[ $applet == busybox ]] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$guest/init" "$root/init"
install -m 0755 "$guest/udhcpc.script" "$root/etc/udhcpc.script"
# Without /dev/console the kernel starts /init with no output at all.
mknod -m 0600 "$root/dev/console" c 5 1 || die "mknod failed: run as root"
mknod -m 0666 "$root/dev/null" c 1 3 || die "mknod failed: run as root"

# Module name (dashes as underscores) -> path relative to $moddir, and the
# path -> its dependencies (modules.dep lists them all, transitively).
declare -A path_of deps_of loaded
while IFS=: read -r path deps; do
    name=${path##*/}
    name=${name%%.ko*}
    path_of[${name//-/_}]=$path
    deps_of[$path]=$deps
done <"$moddir/modules.dep"

order=()
visit() {
    local path=$1 i
    [[ -z ${loaded[$path]:-} ]] || return 0
    loaded[$path]=1
    local -a deps
    read -r -a deps <<<"${deps_of[$path]:-}"
    # modprobe's order: the last dependency listed is loaded first.
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do
        visit "${deps[i]}"
    done
    order+=("$path")
}
for mod in "${MODULES[@]}"; do
    path=${path_of[$mod]:-}
    if [[ -z $path ]]; then
        # Built into this kernel: nothing to load.
        grep -q "/${mod}.ko" "$moddir/modules.builtin" 2>/dev/null ||
            die "module $mod is neither in $moddir/modules.dep nor built in"
        continue
    fi
    visit "$path"
done

# busybox insmod reads plain .ko only: decompress what the kernel ships packed.
for path in "${order[@]}"; do
    file=${path##*/}
    src=$moddir/$path
    case $file in
        *.ko) cp "$src" "$root/lib/modules/$file" ;;
        *.ko.xz) xz -dc "$src" >"$root/lib/modules/${file%.xz}" ;;
        *.ko.zst) zstd -qdc "$src" >"$root/lib/modules/${file%.zst}" ;;
        *.ko.gz) gzip -dc "$src" >"$root/lib/modules/${file%.gz}" ;;
        *) die "unknown module format: $path" ;;
    esac
    echo "${file%.ko*}.ko" >>"$root/lib/modules/load-order"
done

(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -9 >"$work/initrd.img"

# --- boot partition and disk ------------------------------------------------------

cp "$kernel" "$work/vmlinuz"
sed -n 's/^[[:space:]]*APPEND[[:space:]]\+//p' "$guest/syslinux.cfg" >"$work/cmdline"
[[ -s $work/cmdline ]] || die "no APPEND line in $guest/syslinux.cfg"

part_sectors=$((DISK_MIB * 2048 - PART_START))
fat=$work/fat.img
truncate -s $((part_sectors * 512)) "$fat"
mkfs.vfat -F 16 -n OVERCAST -i 0ec0a57e -h "$PART_START" "$fat" >/dev/null
export MTOOLS_SKIP_CHECK=1
mcopy -i "$fat" "$work/vmlinuz" "$work/initrd.img" "$guest/syslinux.cfg" ::
syslinux --install "$fat"

disk=$work/guest.img
truncate -s "${DISK_MIB}M" "$disk"
sfdisk --quiet --no-reread --no-tell-kernel "$disk" >/dev/null <<EOF
label: dos
label-id: 0x0ec0a57e
unit: sectors

start=$PART_START, size=$part_sectors, type=6, bootable
EOF
# The MBR's boot code (440 bytes) goes in after sfdisk, which leaves it alone.
dd if="$MBR" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$fat" of="$disk" bs=512 seek="$PART_START" conv=notrunc,sparse status=none
gzip -n -c "$disk" >"$work/guest.img.gz"

for f in "${outputs[@]}"; do
    mv -f "$work/$f" "$outdir/$f"
done
fingerprint >"$work/inputs"
mv -f "$work/inputs" "$outdir/inputs"

elapsed=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
echo "build-guest: built $outdir (kernel $kver, $(du -k "$outdir/guest.img.gz" | cut -f1) KiB gzipped) in ${elapsed}s"
