# %post ($1: 1 on install, 2 or more on upgrade). Never starts the service on install: it needs
# the operator's /etc/defender-bridge/config.toml first.
chgrp defender-bridge /etc/defender-bridge && chmod 0750 /etc/defender-bridge
install -d -m 0700 -o defender-bridge -g defender-bridge /var/lib/defender-bridge
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    # An upgrade restarts the service only if it was running.
    if [ "$1" -ge 2 ]; then
        systemctl try-restart defender-bridge.service >/dev/null 2>&1 || :
        # And the shards that run (defender-bridge@IofN.service).
        systemctl try-restart 'defender-bridge@*.service' >/dev/null 2>&1 || :
    fi
fi
exit 0
