// crd-check validates CustomResourceDefinitions with Kubernetes' own code: the path
// kube-apiserver takes when a CRD is created (decode with the apiextensions scheme, v1
// defaults, conversion to the internal type, then rest.BeforeCreate with the CRD registry
// strategy, which runs validation.ValidateCustomResourceDefinition: structural schema,
// defaults, CEL compilation and cost budgets).
//
// Built in GOPATH mode against Debian's packages of the Kubernetes libraries by
// scripts/install-k8s-code.sh (no go.mod).
//
// Usage: crd-check FILE...
// Each file holds one or more YAML documents, each an apiextensions.k8s.io/v1
// CustomResourceDefinition. Prints "ok <name>" per valid CRD, or "<name>: <field error>" per
// error, and "<name>: warning: ..." per warning the API server would return; exits 1 if
// any CRD is refused.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/install"
	"k8s.io/apiextensions-apiserver/pkg/registry/customresourcedefinition"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/cel/environment"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/warning"
	baseversion "k8s.io/component-base/version"

	k8sruntime "k8s.io/apimachinery/pkg/runtime"
)

// Debian package versions the binary was built against, set with -ldflags -X by
// scripts/install-k8s-code.sh (GOPATH builds carry no module versions).
var (
	apiextensionsVersion = "unknown"
	apiserverVersion     = "unknown"
	celGoVersion         = "unknown"
)

// warnings collects the warnings the API server would send back with the response.
type warnings struct{ messages []string }

func (w *warnings) AddWarning(agent, text string) { w.messages = append(w.messages, text) }

func main() {
	files := os.Args[1:]
	if len(files) == 0 || files[0] == "-h" || files[0] == "--help" {
		fmt.Fprintln(os.Stderr, "usage: crd-check FILE...  (YAML files of apiextensions.k8s.io/v1 CustomResourceDefinitions)")
		os.Exit(2)
	}
	if files[0] == "--version" {
		fmt.Println(versionLine())
		return
	}
	fmt.Println("crd-check: " + versionLine())

	scheme := k8sruntime.NewScheme()
	install.Install(scheme)
	// Strict, like kubectl's default --validate=strict (fieldValidation=Strict): unknown and
	// duplicate fields are errors. The universal decoder applies the v1 defaults and
	// converts to the internal type, as the API server does before validation.
	decoder := serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDecoder()
	strategy := customresourcedefinition.NewStrategy(scheme)

	failed := false
	for _, file := range files {
		fmt.Printf("crd-check: %s\n", file)
		docs, err := documents(file)
		if err != nil {
			fmt.Printf("%s: %v\n", file, err)
			failed = true
			continue
		}
		if len(docs) == 0 {
			fmt.Printf("%s: no YAML documents\n", file)
			failed = true
		}
		for i, doc := range docs {
			if !check(decoder, strategy, fmt.Sprintf("%s document %d", file, i+1), doc) {
				failed = true
			}
		}
	}
	if failed {
		os.Exit(1)
	}
}

func versionLine() string {
	kube := "1." + strings.TrimPrefix(strings.SplitN(apiextensionsVersion, "-", 2)[0], "0.")
	return fmt.Sprintf("Kubernetes %s validation code (k8s.io/apiextensions-apiserver %s, k8s.io/apiserver %s, cel-go %s: Debian package versions; kube binary version %s, CEL compatibility version %s, %s)",
		kube, apiextensionsVersion, apiserverVersion, celGoVersion,
		baseversion.DefaultKubeBinaryVersion, environment.DefaultCompatibilityVersion(), runtime.Version())
}

// documents splits a YAML file into its non-empty documents.
func documents(file string) ([][]byte, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var docs [][]byte
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(bytes.TrimSpace(stripComments(doc))) > 0 {
			docs = append(docs, doc)
		}
	}
}

func stripComments(doc []byte) []byte {
	var out [][]byte
	for _, line := range bytes.Split(doc, []byte("\n")) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line)
		}
	}
	return bytes.Join(out, []byte("\n"))
}

// check runs one CRD through the API server's create path and prints the result; false if
// the CRD would be refused.
func check(decoder k8sruntime.Decoder, strategy rest.RESTCreateStrategy, where string, doc []byte) bool {
	obj, gvk, err := decoder.Decode(doc, nil, nil)
	if err != nil {
		// Strict decoding errors still return the decoded object; report and go on.
		if obj == nil || !k8sruntime.IsStrictDecodingError(err) {
			fmt.Printf("%s: %v\n", where, err)
			return false
		}
	}
	crd, ok := obj.(*apiextensions.CustomResourceDefinition)
	if !ok {
		fmt.Printf("%s: not a CustomResourceDefinition: %v\n", where, gvk)
		return false
	}
	name := crd.Name
	if name == "" {
		name = where
	}
	valid := true
	if err != nil {
		strict, _ := k8sruntime.AsStrictDecodingError(err)
		for _, e := range strict.Errors() {
			fmt.Printf("%s: strict decoding: %s\n", name, e)
		}
		valid = false
	}

	// The request context of a cluster-scoped create, collecting warnings.
	recorder := &warnings{}
	ctx := genericapirequest.WithNamespace(context.Background(), metaNamespaceNone)
	ctx = warning.WithWarningRecorder(ctx, recorder)
	// What the generic registry does before BeforeCreate: uid and creation timestamp.
	rest.FillObjectMetaSystemFields(crd)

	if err := rest.BeforeCreate(strategy, ctx, crd); err != nil {
		valid = false
		var status apierrors.APIStatus
		if errors.As(err, &status) && status.Status().Details != nil && len(status.Status().Details.Causes) > 0 {
			for _, cause := range status.Status().Details.Causes {
				if cause.Field != "" {
					fmt.Printf("%s: %s: %s\n", name, cause.Field, cause.Message)
				} else {
					fmt.Printf("%s: %s\n", name, cause.Message)
				}
			}
		} else {
			fmt.Printf("%s: %v\n", name, err)
		}
	}
	for _, w := range recorder.messages {
		fmt.Printf("%s: warning: %s\n", name, w)
	}
	if valid {
		fmt.Printf("ok %s\n", name)
	}
	return valid
}

// metaNamespaceNone is the request namespace of a cluster-scoped resource.
const metaNamespaceNone = ""
