output "cluster_name" {
  description = "GKE Autopilot cluster."
  value       = google_container_cluster.mcloudtt.name
}

output "get_credentials" {
  description = "Command that points kubectl at the cluster."
  value       = "gcloud container clusters get-credentials ${google_container_cluster.mcloudtt.name} --region ${var.region} --project ${var.project_id}"
}

output "redis_host" {
  description = "Memorystore's private address, reachable from the cluster."
  value       = google_redis_instance.mcloudtt.host
}

output "redis_port" {
  description = "Memorystore's port."
  value       = google_redis_instance.mcloudtt.port
}

output "redis_auth_string" {
  description = "Memorystore's AUTH string: the password in the Secret mcloudtt-redis."
  value       = google_redis_instance.mcloudtt.auth_string
  sensitive   = true
}

output "bigquery_table" {
  description = "The topic log table, as project.dataset.table."
  value       = "${var.project_id}.${google_bigquery_dataset.topic_log.dataset_id}.${google_bigquery_table.topic_log.table_id}"
}

output "topic_log_service_account" {
  description = "Google service account that writes the topic log (Workload Identity)."
  value       = google_service_account.topic_log.email
}

output "image_repository" {
  description = "Where to push the image: docker push IMAGE_REPOSITORY/mcloudtt:TAG."
  value       = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}"
}

output "image" {
  description = "The image the gke/ overlay deploys (image_tag in the repository)."
  value       = local.image
}

# Values for infra/k8s/gke: terraform output -raw kustomize_env > ../k8s/gke/terraform.env
# Key names are those of the mcloudtt-site ConfigMap (infra/k8s/base/site.env).
output "kustomize_env" {
  description = "Site values for the infra/k8s/gke overlay (no secrets)."
  value       = <<-EOT
    redis_host=${google_redis_instance.mcloudtt.host}
    redis_port=${google_redis_instance.mcloudtt.port}
    bigquery_project_id=${var.project_id}
    bigquery_dataset_id=${google_bigquery_dataset.topic_log.dataset_id}
    bigquery_table_id=${google_bigquery_table.topic_log.table_id}
    bigquery_credentials_path=
    gcp_service_account=${google_service_account.topic_log.email}
    image=${local.image}
  EOT
}
