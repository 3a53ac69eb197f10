# ACL policy of the Nomad token the VLab API uses (`nomad_token` in the Variable
# nomad/jobs/vlab-api), granting exactly what the Nomad runner and the host-state watcher do:
#
#   nomad acl policy apply -description "VLab API" vlab-api deploy/nomad/acl/vlab-api.policy.hcl
#   nomad acl token create -name vlab-api -policy vlab-api      # its Secret ID is the token
#
# The service jobs themselves need no policy: each reads only its own Variable
# nomad/jobs/<job> (vlab-db: password; vlab-api: db_password, nomad_token, public_url;
# vlab-web: api_token, jupyter_token), which Nomad's workload identity allows by default.
# vlab-vpn reads no Variable: each node's host-scoped credential is in /etc/vlab/host.token.

namespace "default" {
  # Validate, register, read and stop the benchmark jobs (vlab-bench-<id>), follow their
  # allocations and evaluations, and read the stderr tail of a failed task.
  capabilities = ["submit-job", "read-job", "list-jobs", "read-logs"]

  variables {
    # The single-job credential of each benchmark job, written before the job is registered
    # and deleted when it ends.
    path "nomad/jobs/vlab-bench-*" {
      capabilities = ["write", "read", "destroy"]
    }
  }
}

# Node status, drain and eligibility: a host whose node is down or drained gets no benchmark
# (vlab_backend.hosts.registry.mark_host_state).
node {
  policy = "read"
}
