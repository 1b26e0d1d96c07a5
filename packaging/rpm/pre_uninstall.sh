# %preun ($1: 0 on erase, 1 or more on upgrade): erasing stops and disables the service.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now defender-bridge.service >/dev/null 2>&1 || :
    # The shards that run (defender-bridge@IofN.service, the template's instances).
    systemctl stop 'defender-bridge@*.service' >/dev/null 2>&1 || :
fi
exit 0
