import { posix } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type BashGuardContext, checkBashCommand } from "../../src/sessions/bash-guard.js";

const WT = "/srv/fr/worktrees/demo-42";
const HOME = "/home/runner";
const context: BashGuardContext = { cwd: WT, worktree: WT, primaryBranch: "main", home: HOME };

function check(command: string, overrides: Partial<BashGuardContext> = {}) {
  return checkBashCommand(command, { ...context, ...overrides });
}

function reasonOf(command: string, overrides: Partial<BashGuardContext> = {}): string {
  const verdict = check(command, overrides);
  if (verdict.allowed) throw new Error(`expected a refusal of ${JSON.stringify(command)}`);
  return verdict.reason;
}

/** Single-quotes for the shell, so generated paths are words whatever they contain. */
function sq(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

describe("force-push to the primary branch", () => {
  it.each([
    "git push --force origin main",
    "git push -f origin main",
    "git push origin main -f",
    "git push origin main --force",
    "git push -fu origin main",
    "git push --forc origin main",
    "git push --force-with-lease origin main",
    "git push --force-with-lease=main:0123abc origin main",
    "git push --force-if-includes origin main",
    "git push origin +main",
    "git push origin +HEAD:main",
    "git push origin HEAD:refs/heads/main --force",
    "git push origin +refs/heads/main",
    "git push -f origin x:refs/heads/main",
    "git push -f origin 'main'",
    '"git" push -f origin "main"',
    "/usr/bin/git push -f origin main",
    "git -C /some/repo push -f origin main",
    "git -c push.default=current --no-pager push --force origin main",
    "git push -o ci.skip -f origin main",
    "git push --mirror origin",
    "git push --all --force origin",
    "git push -f origin 'refs/heads/*:refs/heads/*'",
  ])("refuses %s", (command) => {
    const reason = reasonOf(command);
    expect(reason).toMatch(/force-pushes (to|every branch)/);
    expect(reason).toContain('"main"');
    expect(reason).toContain("open a pull request");
  });

  it.each(["git push -f", "git push --force origin", "git push --force-with-lease", "sudo git push -f"])(
    "refuses a force-push that names no branch: %s",
    (command) => {
      const reason = reasonOf(command);
      expect(reason).toContain("without naming the branch");
      expect(reason).toContain("HEAD:refs/heads/<your-branch>");
    },
  );

  it.each([
    "git push -f origin HEAD",
    "git push -f origin @",
    'git push --force origin "$BRANCH"',
    "git push -f origin $(git branch --show-current)",
  ])("refuses a force-push whose branch is only known at run time: %s", (command) => {
    expect(reasonOf(command)).toContain('could be the primary branch "main"');
  });

  it.each([
    "git push origin --delete main",
    "git push -d origin main",
    "git push origin :main",
    "git push origin :refs/heads/main",
  ])("refuses deleting the primary branch: %s", (command) => {
    expect(reasonOf(command)).toContain('deletes the primary branch "main"');
  });

  it.each([
    "git push origin main",
    "git push",
    "git push -u origin feature",
    "git push --force origin feature",
    "git push -f origin HEAD:feature",
    "git push --force-with-lease origin HEAD:refs/heads/fix-1",
    "git push origin +feature",
    "git push --force origin main:feature",
    "git push -f origin refs/heads/mainline",
    "git push --delete origin old-branch",
    "git push -o ci.skip origin feature -f",
    "git push -f origin feature -- ",
    "git pull --force origin main",
    "git fetch -f origin main:main",
    "echo git push -f origin main",
    "git commit -m 'git push --force origin main'",
  ])("allows %s", (command) => {
    expect(check(command)).toEqual({ allowed: true });
  });

  it("uses the project's primary branch, whatever its name", () => {
    expect(check("git push -f origin main", { primaryBranch: "trunk" })).toEqual({ allowed: true });
    expect(reasonOf("git push -f origin trunk", { primaryBranch: "trunk" })).toContain('primary branch "trunk"');
  });
});

describe("checkout of the primary branch", () => {
  it.each([
    "git checkout main",
    "git switch main",
    "git checkout -f main",
    "git checkout -q main",
    "git checkout main --",
    "git switch --discard-changes main",
    "git checkout --track origin/main",
    "git -C . checkout main",
  ])("refuses %s", (command) => {
    const reason = reasonOf(command);
    expect(reason).toContain('checks out the primary branch "main"');
    expect(reason).toContain(`own worktree (${WT})`);
    expect(reason).toContain("git switch -c <your-branch> origin/main");
  });

  it.each(["git checkout -B main origin/main", "git switch -C main", "git switch -c main", "git checkout -bmain"])(
    "refuses creating or resetting the primary branch: %s",
    (command) => {
      expect(reasonOf(command)).toContain('creates or resets the primary branch "main"');
    },
  );

  it.each([
    "git checkout -b feature origin/main",
    "git checkout -b feature main",
    "git switch -c x origin/main",
    "git switch --create x main",
    "git checkout main -- file.txt",
    "git checkout main file.txt",
    "git checkout -- main",
    "git checkout -p main",
    "git checkout origin/main",
    "git checkout refs/heads/main",
    "git checkout --detach origin/main",
    "git checkout --detach main",
    "git switch --detach main",
    "git switch -d main",
    "git checkout feature",
    "git checkout mainline",
    "git checkout HEAD~1",
    "git checkout -",
    "git checkout --track origin/feature",
    'git checkout "$BRANCH"',
    "git log main",
    "git diff main...HEAD",
  ])("allows %s", (command) => {
    expect(check(command)).toEqual({ allowed: true });
  });
});

describe("rm -rf outside the worktree", () => {
  it.each([
    ["rm -rf /tmp/x", "/tmp/x"],
    ["rm -fr /tmp/x", "/tmp/x"],
    ["rm -Rf /tmp/x", "/tmp/x"],
    ["rm -r -f /tmp/x", "/tmp/x"],
    ["rm -f -R /tmp/x", "/tmp/x"],
    ["rm --recursive --force /tmp/x", "/tmp/x"],
    ["rm -r --force /tmp/x", "/tmp/x"],
    ["rm --rec --fo /tmp/x", "/tmp/x"],
    ["rm -rfv /tmp/x", "/tmp/x"],
    ["rm /tmp/x -rf", "/tmp/x"],
    ["rm -rf build /tmp/x", "/tmp/x"],
    ["/bin/rm -rf /tmp/x", "/tmp/x"],
    ["\\rm -rf /tmp/x", "/tmp/x"],
    ["sudo rm -rf /var/lib/x", "/var/lib/x"],
    ["sudo -u root rm -rf /var/lib/x", "/var/lib/x"],
    ["command rm -rf /tmp/x", "/tmp/x"],
    ["env FOO=1 rm -rf /tmp/x", "/tmp/x"],
    ["nice -n 5 rm -rf /tmp/x", "/tmp/x"],
    ["timeout 10 rm -rf /tmp/x", "/tmp/x"],
    ["FOO=1 rm -rf /tmp/x", "/tmp/x"],
    ["rm -rf /", "/"],
    ["rm -rf --no-preserve-root /", "/"],
    ["rm -rf '/tmp/x'", "/tmp/x"],
    ['rm -rf "/tmp/x"', "/tmp/x"],
    ["rm -rf ~/x", `${HOME}/x`],
    ["rm -rf ~", HOME],
    ["rm -rf $HOME/.cache", `${HOME}/.cache`],
    ['rm -rf "${HOME}"', HOME],
    ["rm -rf ..", "/srv/fr/worktrees"],
    ["rm -rf ../x", "/srv/fr/worktrees/x"],
    ["rm -rf ./../x", "/srv/fr/worktrees/x"],
    ["rm -rf build/../../x", "/srv/fr/worktrees/x"],
    ["rm -rf $WORKTREE/../x", "/srv/fr/worktrees/x"],
    ["rm -rf ${WORKTREE}/..", "/srv/fr/worktrees"],
    ["rm -rf $PWD/../x", "/srv/fr/worktrees/x"],
    [`rm -rf ${WT}/../demo-43`, "/srv/fr/worktrees/demo-43"],
    // A sibling whose name starts with the worktree's is not inside it.
    [`rm -rf ${WT}x`, `${WT}x`],
    ["rm -rf /*", "/*"],
    ["rm -rf ../*", "/srv/fr/worktrees/*"],
    ["rm -rf {build,/etc}", "/etc"],
  ])("refuses %s", (command, path) => {
    const reason = reasonOf(command);
    expect(reason).toContain(`deletes ${path} recursively`);
    expect(reason).toContain("outside this run's worktree");
    expect(reason).toContain(`Stay inside the worktree ${WT}`);
  });

  it.each([".", "./", WT, `${WT}/`, `${WT}/.`, "$WORKTREE", '"$WORKTREE"', "${PWD}", "build/..", "x{a,b{c,..}}/.."])(
    "refuses deleting the worktree itself: rm -rf %s",
    (operand) => {
      const reason = reasonOf(`rm -rf ${operand}`);
      expect(reason).toContain(`would delete the worktree itself (${WT})`);
      expect(reason).toContain("Stay inside the worktree");
    },
  );

  it.each([
    ["rm -rf .*", 'the glob .* can match "." and ".."'],
    ["rm -rf .?*", 'the glob .?* can match "." and ".."'],
  ])("refuses a glob that can reach the parent: %s", (command, note) => {
    expect(reasonOf(command)).toContain(note);
  });

  it.each([
    ["rm -rf $FOO", "$FOO is not known"],
    ['rm -rf "$TMPDIR/x"', "$TMPDIR is not known"],
    ["rm -rf ${FOO:-build}", "is only known when the command runs"],
    ["rm -rf $(pwd)/x", "$(pwd) is only known"],
    ["rm -rf `pwd`/x", "`pwd` is only known"],
    ["rm -rf $1", "$1 is only known"],
    ["rm -rf ~other/x", "~other is only known"],
    ["rm -rf {1..3}", "brace sequence"],
    ["for d in a b; do rm -rf $d; done", "$d is not known"],
  ])("refuses an operand it cannot resolve: %s", (command, problem) => {
    const reason = reasonOf(command);
    expect(reason).toContain("cannot be checked");
    expect(reason).toContain(problem);
    expect(reason).toContain(`Stay inside the worktree ${WT}`);
  });

  it("refuses ~ and $HOME when the home directory is not given", () => {
    expect(reasonOf("rm -rf ~/x", { home: undefined })).toContain("~ is not known");
    expect(reasonOf("rm -rf $HOME/x", { home: undefined })).toContain("$HOME is not known");
  });

  it.each([
    "rm -rf build",
    "rm -rf ./dist",
    "rm -rf build dist node_modules/.cache",
    "rm -rf $WORKTREE/tmp",
    'rm -rf "${WORKTREE}/tmp"',
    '"rm" -rf "$WORKTREE"/tmp',
    "rm -rf $PWD/build",
    `rm -rf ${WT}/build`,
    `rm -rf /srv//fr/worktrees/demo-42/./a`,
    "rm -rf a/./b//c",
    "rm -rf build/../dist",
    "rm -rf *",
    "rm -rf build/*",
    'rm -rf "$WORKTREE"/*',
    "rm -rf .[!.]*",
    "rm -rf .cache*",
    "rm -rf {build,dist}",
    "rm -rf '{a,b}'",
    "rm -rf -- -weird-name",
    'rm -rf ""',
    "rm -rf '$WORKTREE'",
    "rm -r /tmp/x",
    "rm -f /tmp/x",
    "rm /tmp/x",
    "rm -rf",
    "echo rm -rf /",
    'echo "rm -rf /"',
    "grep -r 'rm -rf /' .",
    "command -v rm",
    "ls -rf /",
  ])("allows %s", (command) => {
    expect(check(command)).toEqual({ allowed: true });
  });

  it("resolves relative paths against the Bash tool's cwd", () => {
    const sub = `${WT}/packages/api`;
    expect(check("rm -rf ../web/dist", { cwd: sub })).toEqual({ allowed: true });
    expect(check("rm -rf ../..", { cwd: sub })).toMatchObject({
      allowed: false,
      reason: expect.stringContaining("would delete the worktree itself"),
    });
    expect(reasonOf("rm -rf ../../../x", { cwd: sub })).toContain("deletes /srv/fr/worktrees/x recursively");
    expect(reasonOf("rm -rf build", { cwd: "/tmp" })).toContain("deletes /tmp/build recursively");
    // A relative cwd is taken relative to the worktree.
    expect(check("rm -rf build", { cwd: "packages" })).toEqual({ allowed: true });
  });

  it("refuses an unquoted $WORKTREE whose value bash would split", () => {
    const spaced = { worktree: "/srv/my runs/wt", cwd: "/srv/my runs/wt" };
    expect(reasonOf("rm -rf $WORKTREE/x", spaced)).toContain("$WORKTREE is unquoted and its value contains spaces");
    expect(check('rm -rf "$WORKTREE/x"', spaced)).toEqual({ allowed: true });
    expect(check("rm -rf 'x y'", spaced)).toEqual({ allowed: true });
  });

  it("stops trusting a variable the command line assigns", () => {
    expect(reasonOf("WORKTREE=/; rm -rf $WORKTREE/x")).toContain("$WORKTREE is not known");
    expect(reasonOf("export HOME=/tmp; rm -rf ~/x")).toContain("~ is not known");
    expect(reasonOf("unset PWD\nrm -rf $PWD/x")).toContain("$PWD is not known");
    // A prefix assignment only changes the command's environment, not this shell.
    expect(check("WORKTREE=/ make clean && rm -rf $WORKTREE/tmp")).toEqual({ allowed: true });
  });
});

describe("cd tracking", () => {
  it.each([
    ["cd /tmp && rm -rf x", "/tmp/x"],
    ["cd /tmp; rm -rf x", "/tmp/x"],
    ["cd /tmp\nrm -rf x", "/tmp/x"],
    ["cd .. && rm -rf x", "/srv/fr/worktrees/x"],
    ["cd src && rm -rf ../../x", "/srv/fr/worktrees/x"],
    ["cd src && cd ../.. && rm -rf x", "/srv/fr/worktrees/x"],
    ["(cd /tmp && rm -rf x)", "/tmp/x"],
    ["cd ~ && rm -rf x", `${HOME}/x`],
    ["cd && rm -rf x", `${HOME}/x`],
    ["pushd /tmp && rm -rf x", "/tmp/x"],
    ["cd /tmp || true; rm -rf x", "/tmp/x"],
    // bash runs a cd in a pipeline in a subshell, zsh the last stage in the shell: either may hold.
    ["cd /tmp | cat; rm -rf x", "/tmp/x"],
    // If `cd src` fails, bash goes on in the worktree and deletes its sibling.
    ["cd src; rm -rf ../build", "/srv/fr/worktrees/build"],
    ["sudo -D /tmp rm -rf x", "/tmp/x"],
    ["env -C /tmp rm -rf x", "/tmp/x"],
  ])("refuses %j", (command, path) => {
    expect(reasonOf(command)).toContain(`deletes ${path} recursively`);
  });

  it.each([
    "cd src && rm -rf ../build",
    "cd src || exit 1; rm -rf dist",
    "cd /tmp && cd $WORKTREE && rm -rf x",
    `cd /tmp; cd ${WT} && rm -rf x`,
    "(cd /tmp) && rm -rf x",
    "(cd /tmp && ls); rm -rf build",
    'cd "$WORKTREE/packages" && rm -rf dist',
    "cd /tmp && echo $(rm -rf /srv/fr/worktrees/demo-42/x)",
    "cd /tmp && bash -c 'cd $WORKTREE && rm -rf x'",
  ])("allows %j", (command) => {
    expect(check(command)).toEqual({ allowed: true });
  });

  it.each(["cd $SOMEWHERE && rm -rf x", "cd - && rm -rf x", "cd build* && rm -rf x", "popd && rm -rf x"])(
    "refuses relative paths after a cd it cannot follow: %j",
    (command) => {
      expect(reasonOf(command)).toContain("the directory it runs in is not known");
    },
  );

  it("says when a cd before the command may not have happened", () => {
    expect(reasonOf("cd src; rm -rf ../build")).toContain(
      `a cd before it may have failed, so it may run in ${WT}/src or ${WT}; join the cd to it with &&`,
    );
    expect(reasonOf("cd /tmp || true; rm -rf x")).toContain(`so it may run in /tmp or ${WT};`);
    expect(reasonOf("cd /tmp && rm -rf x")).not.toContain("may have failed");
  });

  it("still resolves absolute paths after a cd it cannot follow", () => {
    expect(check(`cd $SOMEWHERE && rm -rf ${WT}/x`)).toEqual({ allowed: true });
    expect(reasonOf("cd $SOMEWHERE && rm -rf /tmp/x")).toContain("deletes /tmp/x recursively");
  });

  it("lets a cd in eval move the shell, but not one in bash -c", () => {
    expect(reasonOf("eval cd /tmp; rm -rf x")).toContain("deletes /tmp/x recursively");
    expect(check("bash -c 'cd /tmp'; rm -rf x")).toEqual({ allowed: true });
  });
});

describe("command lines", () => {
  it.each([
    ["echo ok && git push -f origin main", "force-pushes"],
    ["make test || git checkout main", "checks out"],
    ["true; rm -rf /tmp/x", "deletes /tmp/x"],
    ["ls | rm -rf /tmp/x", "deletes /tmp/x"],
    ["sleep 1 & rm -rf /tmp/x", "deletes /tmp/x"],
    ["git status\ngit push --force origin main", "force-pushes"],
    ["if true; then git checkout main; fi", "checks out"],
    ["{ git checkout main; }", "checks out"],
    ["! git checkout main", "checks out"],
    ["echo $(git push --force origin main)", "force-pushes"],
    ["echo `rm -rf /tmp/x`", "deletes /tmp/x"],
    ['echo "$(rm -rf /tmp/x)"', "deletes /tmp/x"],
    ["diff <(rm -rf /tmp/x) a", "deletes /tmp/x"],
    ["x=$(git push -f origin main)", "force-pushes"],
    ["ls > $(rm -rf /tmp/x)", "deletes /tmp/x"],
    ["bash -c 'rm -rf /etc'", "deletes /etc"],
    ['sh -c "git push -f origin main"', "force-pushes"],
    ["bash -lc 'cd /tmp && rm -rf x'", "deletes /tmp/x"],
    ["bash -o pipefail -c 'git checkout main'", "checks out"],
    ['eval "git checkout main"', "checks out"],
    ["eval git checkout main", "checks out"],
    ["cat <<EOF\nnotes\nEOF\ngit checkout main", "checks out"],
    ["f() { rm -rf /tmp/x; }; f", "deletes /tmp/x"],
    ["git add . && git commit -m 'wip' && git push -f origin main 2>&1 | tail -n 5", "force-pushes"],
  ])("finds the refused command in %j", (command, what) => {
    expect(reasonOf(command)).toContain(what);
  });

  it("names the simple command it refused", () => {
    expect(reasonOf("npm test && git push --force origin main 2>&1")).toContain("`git push --force origin main 2>&1`");
  });

  it.each([
    "cat <<'EOF' > notes.md\ngit push --force origin main\nrm -rf /\nEOF",
    "cat <<EOF > notes.md\ngit checkout main\nEOF\necho done",
    "cat <<-EOF > notes.md\n\tgit checkout main\n\tEOF\necho done",
    "echo hi # git push -f origin main",
    "echo 'a;b' && echo \"git checkout main\"",
    "printf '%s\\n' 'rm -rf /' > danger.txt",
    "echo $'git checkout main\\n'",
    "git log --grep='rm -rf /'",
    "npm test 2>&1 | tail -n 20",
    "echo done > out.txt 2>&1",
    "",
    "   ",
  ])("allows %j", (command) => {
    expect(check(command)).toEqual({ allowed: true });
  });

  it("refuses nesting deeper than it checks", () => {
    let command = "echo hi";
    for (let level = 0; level < 10; level++) command = `echo $(${command})`;
    expect(reasonOf(command)).toContain("too deep to check");
  });

  it("reads unterminated quotes and substitutions leniently", () => {
    expect(check("echo 'unterminated")).toEqual({ allowed: true });
    expect(reasonOf('rm -rf "/tmp/x')).toContain("deletes /tmp/x");
    expect(reasonOf("echo $(rm -rf /tmp/x")).toContain("deletes /tmp/x");
  });
});

describe("properties", () => {
  const segment = fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9._ -]{0,11}$/);

  it("allows rm -rf of any path below the worktree, however it is written", () => {
    fc.assert(
      fc.property(
        fc.array(segment, { minLength: 1, maxLength: 6 }),
        fc.constantFrom("relative", "dot", "worktree-var", "absolute"),
        (segments, form) => {
          const path = segments.join("/");
          const operand =
            form === "relative"
              ? sq(path)
              : form === "dot"
                ? sq(`./${path}`)
                : form === "worktree-var"
                  ? `"$WORKTREE"/${sq(path)}`
                  : sq(`${WT}/${path}`);
          expect(check(`rm -rf ${operand}`)).toEqual({ allowed: true });
        },
      ),
    );
  });

  it("refuses rm -rf of any absolute path outside the worktree", () => {
    fc.assert(
      fc.property(fc.array(segment, { minLength: 0, maxLength: 5 }), (segments) => {
        const path = `/${segments.join("/")}`;
        fc.pre(path !== WT && !path.startsWith(`${WT}/`));
        const verdict = check(`rm -rf ${sq(path)}`);
        expect(verdict.allowed).toBe(false);
      }),
    );
  });

  it("agrees with lexical normalisation for relative paths with . and ..", () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom("a", "b c", ".", "..", "d.e"), { minLength: 1, maxLength: 8 }),
        (segments) => {
          const path = segments.join("/");
          const resolved = posix.normalize(posix.join(WT, path)).replace(/(.)\/$/, "$1");
          const inside = resolved.startsWith(`${WT}/`);
          expect(check(`rm -rf ${sq(path)}`).allowed).toBe(inside);
        },
      ),
    );
  });

  it("does not care how a word is quoted", () => {
    fc.assert(
      fc.property(
        fc.constantFrom("main", "feature", "/tmp/x", "build", "../x"),
        fc.constantFrom("git push -f origin", "git checkout", "rm -rf"),
        (word, prefix) => {
          const plain = check(`${prefix} ${word}`).allowed;
          expect(check(`${prefix} '${word}'`).allowed).toBe(plain);
          expect(check(`${prefix} "${word}"`).allowed).toBe(plain);
          expect(check(`${prefix} ${word.replace(/^(.)/, "\\$1")}`).allowed).toBe(plain);
        },
      ),
    );
  });

  it("never throws, whatever the input", () => {
    const shellish = fc.string({
      unit: fc.constantFrom(..."ab /.-~$(){}[]*?'\"`\\;&|<>#\n\t=,!rmgitpushcd"),
      maxLength: 80,
    });
    fc.assert(
      fc.property(fc.oneof(fc.string(), shellish), (command) => {
        const verdict = check(command);
        expect(typeof verdict.allowed).toBe("boolean");
      }),
      { numRuns: 2000 },
    );
  });
});
