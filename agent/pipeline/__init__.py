"""The inbound pipeline: snapshot -> typed state -> plan -> render -> stage, check, rename."""
