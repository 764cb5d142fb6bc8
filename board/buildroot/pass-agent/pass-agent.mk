################################################################################
#
# pass-agent: installs a prebuilt overlay of tools/build_overlay.py (see docs/IMAGE.md)
#
################################################################################

PASS_AGENT_VERSION = 0.1.0
PASS_AGENT_BOARD = $(call qstrip,$(BR2_PACKAGE_PASS_AGENT_BOARD))
PASS_AGENT_SOURCE = pass-agent-$(PASS_AGENT_VERSION)-$(PASS_AGENT_BOARD).tar.gz
PASS_AGENT_SITE = file://$(call qstrip,$(BR2_PACKAGE_PASS_AGENT_OVERLAY_DIR))
# pass-agent is Apache-2.0; it vendors pyserial 3.5 and tomli 2.0.1 (/usr/lib/pass-agent). The texts are in the
# overlay; pass-agent.hash holds their SHA-256 (and, once copied from the overlay build, the tarball's).
PASS_AGENT_LICENSE = Apache-2.0, BSD-3-Clause (pyserial), MIT (tomli)
PASS_AGENT_LICENSE_FILES = usr/share/doc/pass-agent/LICENSE \
	usr/share/doc/pass-agent/third-party/pyserial/LICENSE.txt \
	usr/share/doc/pass-agent/third-party/tomli/LICENSE
# The overlay's entries start with ./ : keep the whole tree.
PASS_AGENT_STRIP_COMPONENTS = 0

# The agent's account and the player group (the same as usr/lib/sysusers.d/pass-agent.conf).
define PASS_AGENT_USERS
	pass-agent -1 pass-agent -1 * /var/lib/pass-agent - - pass-agent (Adobe Pass token service)
	- - pass-client -1 * - - - player group: may connect to /run/pass-agent/agent.sock
endef

define PASS_AGENT_INSTALL_TARGET_CMDS
	cp -R --no-dereference --preserve=mode $(@D)/etc $(@D)/usr $(TARGET_DIR)/
endef

define PASS_AGENT_INSTALL_INIT_SYSTEMD
	mkdir -p $(TARGET_DIR)/usr/lib/systemd/system-preset
	printf 'enable pass-agent.socket\nenable pass-agent.service\n' \
		> $(TARGET_DIR)/usr/lib/systemd/system-preset/80-pass-agent.preset
endef

$(eval $(generic-package))
