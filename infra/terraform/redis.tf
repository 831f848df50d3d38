# Memorystore for Redis: the brokers' sessions, retained messages, routes and inboxes.
# STANDARD_HA keeps a replica in another zone with automatic failover; the brokers reconnect and
# re-announce their routes after a failover (issue 9's Redis-fault rules).
resource "google_redis_instance" "mcloudtt" {
  name           = var.name
  region         = var.region
  tier           = var.redis_tier
  memory_size_gb = var.redis_memory_size_gb
  redis_version  = var.redis_version

  authorized_network = google_compute_network.mcloudtt.id
  connect_mode       = "DIRECT_PEERING"

  # Clients must send the AUTH string (`terraform output -raw redis_auth_string`), which goes
  # into the Kubernetes Secret mcloudtt-redis.
  auth_enabled = true
  # Traffic stays on the VPC's private addresses. SERVER_AUTHENTICATION would add TLS on port
  # 6378 with a Google-managed CA that the brokers would then have to trust.
  transit_encryption_mode = "DISABLED"

  redis_configs = {
    # Sessions and queued messages must never be evicted: Redis refuses writes when full instead.
    "maxmemory-policy" = "noeviction"
  }

  persistence_config {
    persistence_mode    = "RDB"
    rdb_snapshot_period = "ONE_HOUR"
  }

  depends_on = [google_project_service.apis]
}
