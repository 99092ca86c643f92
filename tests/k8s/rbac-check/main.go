// rbac-check compares RBAC rules with Kubernetes' own code: k8s.io/component-helpers'
// validation.Covers, the comparison kube-apiserver's escalation check makes when someone
// creates a Role (its rules must be covered by the creator's own, unless it may
// `escalate`), and that says whether a set of rules allows each requested permission.
//
// Built in GOPATH mode against Debian's packages of the Kubernetes libraries by
// scripts/install-k8s-code.sh (no go.mod).
//
// Usage: rbac-check < input.json
// The input is {"owner": [PolicyRule...], "servant": [PolicyRule...]} (rbac.authorization.k8s.io/v1
// PolicyRules, JSON). Prints "covered", or one line per servant rule the owner's rules
// do not cover ("missing <rule as JSON>") and exits 1.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/component-helpers/auth/rbac/validation"
)

type input struct {
	Owner   []rbacv1.PolicyRule `json:"owner"`
	Servant []rbacv1.PolicyRule `json:"servant"`
}

func main() {
	raw, err := io.ReadAll(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "rbac-check: reading stdin:", err)
		os.Exit(2)
	}
	var in input
	if err := json.Unmarshal(raw, &in); err != nil {
		fmt.Fprintln(os.Stderr, "rbac-check: input:", err)
		os.Exit(2)
	}
	covered, missing := validation.Covers(in.Owner, in.Servant)
	if covered {
		fmt.Println("covered")
		return
	}
	for _, rule := range missing {
		text, _ := json.Marshal(rule)
		fmt.Printf("missing %s\n", text)
	}
	os.Exit(1)
}
