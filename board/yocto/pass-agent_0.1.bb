# pass-agent: Adobe Pass DCR agent for set-top boxes (BitBake recipe skeleton).
#
# Installs the overlay built by `python -m tools.build_overlay --board <board> --out DIR` (see
# docs/IMAGE.md): the agent (/usr/bin/pass-agent, a launcher script for /usr/bin/python3, and its
# modules in /usr/lib/pass-agent/), the systemd units, sysusers.d/tmpfiles.d, the default
# config and the board profile. Copy pass-agent-${PASS_AGENT_VERSION}-${PASS_AGENT_BOARD}.tar.gz into
# files/ beside this recipe (or point SRC_URI at your artefact store), set PASS_AGENT_BOARD in your
# machine or local.conf, and add "pass-agent" to IMAGE_INSTALL.
#
# Build the overlay with the same Python minor version as the image (and --compile) to ship bytecode
# that the image's Python uses: starts are then faster. Any Python >= 3.9 runs it either way. Build it
# with --console only if the product turns the serial console on (the unit then opens the board's tty).

SUMMARY = "Adobe Pass device registration and token service for set-top boxes"
# pass-agent is Apache-2.0; it vendors pyserial 3.5 (BSD-3-Clause) and tomli 2.0.1 (MIT) in /usr/lib/pass-agent.
# The texts are in the overlay (${S}); tests/test_overlay.py checks these checksums against a build.
LICENSE = "Apache-2.0 & BSD-3-Clause & MIT"
LIC_FILES_CHKSUM = " \
    file://usr/share/doc/pass-agent/LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57 \
    file://usr/share/doc/pass-agent/third-party/pyserial/LICENSE.txt;md5=520e45e59fc2cf94aa53850f46b86436 \
    file://usr/share/doc/pass-agent/third-party/tomli/LICENSE;md5=aaaaf0879d17df0110d1aa8c8c9f46f5 \
"

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
    # The overlay keeps its units in /usr/lib/systemd/system; they belong in ${systemd_system_unitdir}
    # (the same place with usrmerge, /lib/systemd/system without), where systemd.bbclass looks.
    if [ "${systemd_system_unitdir}" != "/usr/lib/systemd/system" ]; then
        install -d ${D}${systemd_system_unitdir}
        cp -R --no-dereference --preserve=mode ${D}/usr/lib/systemd/system/. ${D}${systemd_system_unitdir}/
        rm -rf ${D}/usr/lib/systemd/system
        rmdir --ignore-fail-on-non-empty ${D}/usr/lib/systemd
    fi
    chown -R root:root ${D}
    # The software statement is provisioned per product, never in the recipe:
    # install /etc/pass-agent/software-statement.jwt (0640 root:pass-agent) from your own recipe.
}

FILES:${PN} += " \
    ${bindir}/pass-agent \
    ${nonarch_libdir}/pass-agent \
    ${sysconfdir}/pass-agent \
    ${systemd_system_unitdir}/pass-agent.service.d \
    ${nonarch_libdir}/sysusers.d \
    ${nonarch_libdir}/tmpfiles.d \
    ${datadir}/pass-agent \
    ${docdir}/pass-agent \
"
CONFFILES:${PN} = "${sysconfdir}/pass-agent/agent.toml"

# What the agent imports from the image (python3-core gives /usr/bin/python3, the launcher's shebang).
# cryptography has a compiled core and is not vendored; pyserial and tomli (for Python < 3.11) are
# vendored in /usr/lib/pass-agent.
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
