# pass-agent: Adobe Pass DCR agent for set-top boxes (BitBake recipe skeleton).
#
# Installs the overlay built by `python -m tools.build_overlay --board <board> --out DIR` (see
# docs/IMAGE.md): the zipapp /usr/bin/pass-agent, the systemd units, sysusers.d/tmpfiles.d, the default
# config and the board profile. Copy pass-agent-${PASS_AGENT_VERSION}-${PASS_AGENT_BOARD}.tar.gz into
# files/ beside this recipe (or point SRC_URI at your artefact store), set PASS_AGENT_BOARD in your
# machine or local.conf, and add "pass-agent" to IMAGE_INSTALL.
#
# Build the overlay with the same Python minor version as the image (and --compile) to ship bytecode
# that the image's Python uses: starts are then faster. Any Python >= 3.9 runs it either way.

SUMMARY = "Adobe Pass device registration and token service for set-top boxes"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

PASS_AGENT_VERSION = "0.1.0"
PASS_AGENT_BOARD ??= "generic-linux"

SRC_URI = "file://pass-agent-${PASS_AGENT_VERSION}-${PASS_AGENT_BOARD}.tar.gz;subdir=overlay;unpack=1"
S = "${WORKDIR}/overlay"

inherit systemd useradd

# No compiled code, but the config and drop-in carry the board: one package per machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"
INHIBIT_DEFAULT_DEPS = "1"

# Accounts at build time, so a read-only rootfs needs no first-boot sysusers run. The same accounts are
# in /usr/lib/sysusers.d/pass-agent.conf for images that do run systemd-sysusers.
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system pass-agent; --system pass-client"
USERADD_PARAM:${PN} = "--system --gid pass-agent --home-dir /var/lib/pass-agent --no-create-home \
                       --shell /sbin/nologin pass-agent"

SYSTEMD_SERVICE:${PN} = "pass-agent.service pass-agent.socket"
SYSTEMD_AUTO_ENABLE = "enable"

do_configure[noexec] = "1"
do_compile[noexec] = "1"

do_install() {
    # Copy the tree as the overlay lays it out; ownership root:root, modes as built.
    cp -R --no-dereference --preserve=mode ${S}/. ${D}/
    chown -R root:root ${D}
    # The software statement is provisioned per product, never in the recipe:
    # install /etc/pass-agent/software-statement.jwt (0640 root:pass-agent) from your own recipe.
}

FILES:${PN} += " \
    ${bindir}/pass-agent \
    ${sysconfdir}/pass-agent \
    ${systemd_system_unitdir}/pass-agent.service.d \
    ${nonarch_libdir}/sysusers.d \
    ${nonarch_libdir}/tmpfiles.d \
    ${datadir}/pass-agent \
    ${docdir}/pass-agent \
"
CONFFILES:${PN} = "${sysconfdir}/pass-agent/agent.toml"

# What the zipapp imports from the image. cryptography has a compiled core and is not vendored.
# python3-tomli is needed only when the image's Python is older than 3.11 (tomllib).
RDEPENDS:${PN} = " \
    python3-core \
    python3-cryptography \
    python3-json \
    python3-logging \
    python3-threading \
    python3-netclient \
    python3-io \
    python3-compression \
    python3-crypt \
    python3-fcntl \
    python3-unixadmin \
    python3-datetime \
    python3-shell \
"
