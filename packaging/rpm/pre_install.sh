# %pre: the service's system user and group exist before the files are unpacked, so that
# config.toml gets its group (root:defender-bridge, 0640).
getent group defender-bridge >/dev/null || groupadd -r defender-bridge
getent passwd defender-bridge >/dev/null ||
    useradd -r -g defender-bridge -d /var/lib/defender-bridge -M -s /sbin/nologin \
        -c "defender-bridge daemon" defender-bridge
exit 0
