# The Terraform example of the product overview: a Postgres declared with the
# Kubernetes provider's kubernetes_manifest resource (server-side apply).
resource "kubernetes_manifest" "postgres" {
  manifest = {
    apiVersion = "apps.cozystack.io/v1alpha1"
    kind       = "Postgres"
    metadata = {
      name = "my-postgres"
    }
    spec = {
      size = "20Gi"
      replicas = 3
    }
  }
}
