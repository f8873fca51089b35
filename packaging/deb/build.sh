#!/bin/sh
# Builds the shopfloor-agent Debian package from an agent binary, with Debian's own dpkg-deb:
#   packaging/deb/build.sh target/dist/shopfloor-agent out/
# prints the path of the .deb. The version is the workspace's (Cargo.toml), the architecture
# this host's (dpkg --print-architecture). The Modbus and OPC UA simulators are never packaged.
set -eu
binary=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")
arch=$(dpkg --print-architecture)
stage=$(mktemp -d)
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$binary" "$stage/usr/bin/shopfloor-agent"
install -D -m 0644 "$here/shopfloor-agent.service" "$stage/lib/systemd/system/shopfloor-agent.service"
install -D -m 0644 "$here/shopfloor-agent.sysusers" "$stage/usr/lib/sysusers.d/shopfloor-agent.conf"
install -D -m 0644 "$here/agent.yaml" "$stage/etc/shopfloor/agent.yaml"
install -D -m 0644 "$here/envelope.yaml" "$stage/etc/shopfloor/envelope.yaml"
install -D -m 0644 "$here/README.Debian" "$stage/usr/share/doc/shopfloor-agent/README.Debian"
install -D -m 0644 "$here/slices.conf" "$stage/usr/share/doc/shopfloor-agent/slices.conf"
install -D -m 0644 "$here/copyright" "$stage/usr/share/doc/shopfloor-agent/copyright"
install -d "$stage/DEBIAN"
for script in postinst prerm postrm; do
    install -m 0755 "$here/$script" "$stage/DEBIAN/$script"
done
printf '/etc/shopfloor/agent.yaml\n/etc/shopfloor/envelope.yaml\n' > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: shopfloor-agent
Version: $version
Architecture: $arch
Maintainer: Shopfloor maintainers <maintainers@shopfloor.invalid>
Installed-Size: $size
Depends: libc6, systemd (>= 245)
Section: net
Priority: optional
Homepage: https://github.com/shopfloor-io/shopfloor
Description: Shopfloor edge agent for remote control of plant equipment
 Drives a plant host's equipment (Modbus TCP) at the configuration a Shopfloor controller
 declares, executes its remote-control commands exactly once within interlock limits and the
 plant's own safety envelope, and keeps the plant safe when the controller is away.
CONTROL
mkdir -p "$out"
deb="$out/shopfloor-agent_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
