# Vault Agent for an XAI node running xai-keys: renders the gateway's secrets onto tmpfs
# (/run), readable only by the xai-keys service user. Nothing is ever written to a disk.
#
#   vault agent -config=/etc/xai-keys/vault-agent.hcl
#
# Order the gateway after the agent (a drop-in with After= and Requires=vault-agent.service):
# a missing peer key ring stops the gateway from starting, by design.

auto_auth {
  method "approle" {
    config = {
      role_id_file_path                   = "/etc/vault-agent/role-id"
      secret_id_file_path                 = "/etc/vault-agent/secret-id"
      remove_secret_id_file_after_reading = true
    }
  }
}

# The first admin key's secret, for XAI_BOOTSTRAP_ADMIN_KEY (EnvironmentFile of the unit).
# Remove this stanza (and the secret) once the first admin key exists: bootstrap-admin is
# idempotent, and a revoked bootstrap secret is refused, never registered again.
template {
  source          = "/etc/xai-keys/vault/bootstrap.env.ctmpl"
  destination     = "/run/xai-keys/bootstrap.env"
  perms           = "0600"
  user            = "xai-keys"
  group           = "xai-keys"
  error_on_missing_key = true
}

# The validator's peer key ring (XAI_PEER_KEYRING_FILE): the gateway re-reads it within a
# second of a change, so rotating the peer key needs no restart (runbook 5.5).
template {
  source          = "/etc/xai-keys/vault/keyring.env.ctmpl"
  destination     = "/run/xai-peer/keyring.env"
  perms           = "0600"
  user            = "xai-keys"
  group           = "xai-keys"
  error_on_missing_key = true
}
