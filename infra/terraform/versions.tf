# Versions are pinned: a provider upgrade is a deliberate change, reviewed with `terraform plan`.
terraform {
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "6.14.1"
    }
  }

  # State stays local by default (terraform.tfstate here, not committed). For a team, keep it in
  # a bucket instead:
  #   backend "gcs" { bucket = "YOUR-BUCKET" prefix = "mcloudtt" }
}

provider "google" {
  project = var.project_id
  region  = var.region
}
