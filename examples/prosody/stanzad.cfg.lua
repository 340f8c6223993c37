-- stanzad as an external component (XEP-0114) of Prosody 0.12 or later.
--
-- Debian: save as /etc/prosody/conf.d/stanzad.cfg.lua (prosody.cfg.lua includes conf.d/*.cfg.lua at its
-- end), then `prosodyctl check config` and `systemctl restart prosody`. Elsewhere, paste it at the end of
-- prosody.cfg.lua.
--
-- Prosody listens for components on 127.0.0.1 and ::1, port 5347, by default; that is what stanzad's
-- [component] server = "127.0.0.1:5347" expects. Other ports or interfaces go in the *global* section
-- (before the first VirtualHost), never here:
--   component_ports = { 5347 }
--   component_interfaces = { "127.0.0.1" }

Component "bot.example.org"
    -- The same secret as stanzad's [component] secret (or the first line of its secret_file).
    -- Make one with: head -c 32 /dev/urandom | base64
    component_secret = "change-me-to-a-long-random-secret"
