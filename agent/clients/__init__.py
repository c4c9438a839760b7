"""Clients of the node's processes (Envoy admin, model server, the agent's control API);
they import no engine of the agent."""
