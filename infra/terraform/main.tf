# mcloudtt on Google Cloud: a GKE Autopilot cluster for the brokers, Memorystore for Redis as
# their shared state, a BigQuery dataset and table for the topic log, and an Artifact Registry
# repository for the image.
#
#   cd infra/terraform && terraform init && terraform apply -var project_id=YOUR-PROJECT
#
# Then follow infra/README.md (cert-manager, secrets, kubectl apply -k infra/k8s/gke).

locals {
  apis = [
    "artifactregistry.googleapis.com",
    "bigquery.googleapis.com",
    "compute.googleapis.com",
    "container.googleapis.com",
    "iam.googleapis.com",
    "redis.googleapis.com",
  ]
  image = "${var.region}-docker.pkg.dev/${var.project_id}/${google_artifact_registry_repository.images.repository_id}/mcloudtt:${var.image_tag}"
}

resource "google_project_service" "apis" {
  for_each = toset(local.apis)
  service  = each.value
  # Other workloads of the project may use these APIs too.
  disable_on_destroy = false
}

# One VPC for the cluster and Memorystore: Memorystore is reachable only from its authorized
# network, over private addresses.
resource "google_compute_network" "mcloudtt" {
  name                    = var.name
  auto_create_subnetworks = false
  depends_on              = [google_project_service.apis]
}

resource "google_compute_subnetwork" "mcloudtt" {
  name          = var.name
  network       = google_compute_network.mcloudtt.id
  region        = var.region
  ip_cidr_range = var.subnet_cidr
  # BigQuery, Artifact Registry and the token endpoint without public addresses.
  private_ip_google_access = true

  secondary_ip_range {
    range_name    = "pods"
    ip_cidr_range = var.pods_cidr
  }
  secondary_ip_range {
    range_name    = "services"
    ip_cidr_range = var.services_cidr
  }
}

# Autopilot: Google manages the nodes, sizes them from the pods' requests (infra/k8s sets
# requests = limits), spreads them over the region's zones, and enables Workload Identity.
resource "google_container_cluster" "mcloudtt" {
  name             = var.name
  location         = var.region
  enable_autopilot = true

  network    = google_compute_network.mcloudtt.id
  subnetwork = google_compute_subnetwork.mcloudtt.id
  ip_allocation_policy {
    cluster_secondary_range_name  = "pods"
    services_secondary_range_name = "services"
  }

  release_channel {
    channel = "REGULAR"
  }

  deletion_protection = var.deletion_protection
  depends_on          = [google_project_service.apis]
}

resource "google_artifact_registry_repository" "images" {
  location      = var.region
  repository_id = var.name
  format        = "DOCKER"
  description   = "mcloudtt container images"
  depends_on    = [google_project_service.apis]
}
