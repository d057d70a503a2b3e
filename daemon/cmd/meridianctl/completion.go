package main

import (
	"context"
	"fmt"
	"io"
	"time"
)

// The scripts complete commands and flags statically and Service and pod
// names by asking meridianctl itself (`meridianctl __complete services|pods`),
// which reads them from the daemon; no daemon, no names.

const bashCompletion = `# meridianctl bash completion: source <(meridianctl completion bash)
_meridianctl() {
    local cur prev cmd
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    cmd=""
    local i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --socket|--server|--node|--kubeconfig|--api-port|--tls-cert|--tls-key|--ca|--tls-server-name) ((i++)) ;;
            -*) ;;
            *) cmd="${COMP_WORDS[i]}"; break ;;
        esac
    done
    case "$prev" in
        -o) COMPREPLY=($(compgen -W "table wide json yaml" -- "$cur")); return ;;
        --socket|--kubeconfig|--tls-cert|--tls-key|--ca) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --node) COMPREPLY=($(compgen -W "$(kubectl get nodes -o name 2>/dev/null | sed 's|^node/||')" -- "$cur")); return ;;
        --source) COMPREPLY=($(compgen -W "kernel rib" -- "$cur")); return ;;
    esac
    case "$cmd" in
        "") COMPREPLY=($(compgen -W "routes peers ipam services policy trace doctor completion help --socket --server --node --kubeconfig --api-port --tls-cert --tls-key --ca --tls-server-name" -- "$cur")) ;;
        routes) COMPREPLY=($(compgen -W "--prefix --contains --source --watch -o" -- "$cur")) ;;
        services) COMPREPLY=($(compgen -W "-n -o $(meridianctl __complete services 2>/dev/null)" -- "$cur")) ;;
        policy) COMPREPLY=($(compgen -W "evaluate -n -o $(meridianctl __complete pods 2>/dev/null)" -- "$cur")) ;;
        completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")) ;;
        *) COMPREPLY=($(compgen -W "-o" -- "$cur")) ;;
    esac
}
complete -F _meridianctl meridianctl
`

const zshCompletion = `#compdef meridianctl
# meridianctl zsh completion: source <(meridianctl completion zsh)
_meridianctl() {
    local -a commands
    commands=(
        'routes:kernel routes and BGP RIB'
        'peers:BGP sessions'
        'ipam:pod address allocations'
        'services:Service frontends, targets and endpoints'
        'policy:NetworkPolicies per pod; policy evaluate SRC DST PORT/PROTO'
        'trace:explain one flow: trace SRC DST:PORT/PROTO'
        'doctor:check this node for common problems'
        'completion:print a shell completion script'
    )
    _arguments -C \
        '--socket[meridiand API socket]:socket:_files' \
        '--server[meridiand TCP address]:host\:port:' \
        "--node[reach this node's meridiand]:node:($(kubectl get nodes -o name 2>/dev/null | sed 's|^node/||'))" \
        '--kubeconfig[kubeconfig for --node]:kubeconfig:_files' \
        '--api-port[TCP port of the API for --node]:port:' \
        '--tls-cert[client certificate]:file:_files' \
        '--tls-key[client key]:file:_files' \
        '--ca[CA of the daemon certificate]:file:_files' \
        '--tls-server-name[name in the daemon certificate]:name:' \
        '1: :->cmd' \
        '*:: :->args'
    case $state in
        cmd) _describe 'command' commands ;;
        args)
            case $words[1] in
                routes) _arguments '--prefix[only routes inside CIDR]:cidr:' '--contains[routes containing IP]:ip:' '--source[kernel or rib]:source:(kernel rib)' '--watch[stream changes]' '-o[output format]:format:(table wide json yaml)' ;;
                services) _arguments '-n[namespace]:namespace:' '-o[output format]:format:(table wide json yaml)' "1:service:($(meridianctl __complete services 2>/dev/null))" ;;
                policy) _arguments '-n[namespace]:namespace:' '-o[output format]:format:(table wide json yaml)' "1:pod or evaluate:(evaluate $(meridianctl __complete pods 2>/dev/null))" ;;
                completion) _arguments '1:shell:(bash zsh)' ;;
                *) _arguments '-o[output format]:format:(table wide json yaml)' ;;
            esac ;;
    esac
}
compdef _meridianctl meridianctl
`

func completion(out io.Writer, shell string) error {
	switch shell {
	case "bash":
		_, err := io.WriteString(out, bashCompletion)
		return err
	case "zsh":
		_, err := io.WriteString(out, zshCompletion)
		return err
	}
	return fmt.Errorf("unknown shell %q (want bash or zsh)", shell)
}

// completeNames prints Service or pod names, one per line, for the shell
// scripts. Errors print nothing: completion must never spew.
func completeNames(ctx context.Context, out io.Writer, tgt target, args []string) {
	if len(args) != 1 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, conn, err := connect(ctx, tgt)
	if err != nil {
		return
	}
	defer conn.Close()
	seen := map[string]bool{}
	switch args[0] {
	case "services":
		svcs, err := services(ctx, c, "", "")
		if err != nil {
			return
		}
		for _, s := range svcs {
			if !seen[s.GetName()] {
				seen[s.GetName()] = true
				fmt.Fprintln(out, s.GetName())
			}
		}
	case "pods":
		pods, err := podPolicies(ctx, c, "", "")
		if err != nil {
			return
		}
		for _, p := range pods {
			if !seen[p.GetName()] {
				seen[p.GetName()] = true
				fmt.Fprintln(out, p.GetName())
			}
		}
	}
}
