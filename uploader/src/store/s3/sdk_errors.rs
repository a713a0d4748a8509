//! What the S3 SDK's errors mean here: which are passing troubles (retried), which mean an
//! upload must start over, and one sentence an operator can act on for each.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use super::START_OVER;
use crate::error::UploadError;

/// NoSuchUpload (S3, COS) or a plain 404 on an upload-id call: the upload is gone.
pub(super) fn is_no_such_upload<E: ProvideErrorMetadata>(
    err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    err.as_service_error().and_then(|e| e.code()) == Some("NoSuchUpload")
        || err
            .raw_response()
            .is_some_and(|r| r.status().as_u16() == 404)
}

/// A conditional create refused: 412 Precondition Failed, or 409 ConditionalRequestConflict
/// (S3's answer when another write to the key was in progress).
pub(super) fn is_key_taken<E>(err: &SdkError<E, HttpResponse>) -> bool {
    matches!(err, SdkError::ServiceError(ctx) if matches!(ctx.raw().status().as_u16(), 409 | 412))
}

/// The store answered in full, and the answer is no use: a body the SDK cannot read (moto's
/// 200 was one) or a refusal below 500. Unreachable stores, timeouts, answers cut off while
/// being read and 5xx are passing troubles.
pub(super) fn answered_unusably<E>(err: &SdkError<E, HttpResponse>) -> bool {
    matches!(err, SdkError::ServiceError(ctx) if ctx.raw().status().as_u16() < 500)
}

pub(super) fn start_over<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> UploadError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    UploadError::Store {
        op,
        message: format!("{START_OVER}{}", describe_sdk_error(&err)),
    }
}

/// [`UploadError::StoreUnreachable`] when the store could not be reached, timed out, cut its
/// answer off or failed on its side (5xx); [`UploadError::Store`] when it answered with a
/// refusal, or the request could not even be built here.
pub(super) fn sdk_error<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> UploadError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = describe_sdk_error(&err);
    let unreachable = match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(ctx) => ctx.raw().status().is_server_error(),
        _ => false,
    };
    if unreachable {
        UploadError::StoreUnreachable { op, message }
    } else {
        UploadError::Store { op, message }
    }
}

/// One sentence an operator can act on: the store's HTTP status with its error code and message
/// when it answered, else why it could not be reached. (The SDK's own Display says only
/// "service error"; its Debug is a page of internals.)
pub fn describe_sdk_error<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => {
            let mut text = format!("the store answered HTTP {}", ctx.raw().status().as_u16());
            match (ctx.err().code(), ctx.err().message()) {
                (Some(code), Some(message)) => text.push_str(&format!(" {code}: {message}")),
                (Some(code), None) => text.push_str(&format!(" {code}")),
                (None, Some(message)) => text.push_str(&format!(": {message}")),
                // No error code: the SDK could not read the answer (e.g. a 200 whose XML it
                // failed to parse); the parser's own words are the only clue.
                (None, None) => {
                    text.push_str(&format!(
                        " but its answer could not be read: {}",
                        root_cause(err)
                    ));
                }
            }
            text
        }
        SdkError::TimeoutError(_) => "the store did not answer in time".to_string(),
        SdkError::DispatchFailure(_) => format!("could not reach the store: {}", root_cause(err)),
        SdkError::ResponseError(_) => {
            format!("the store's answer could not be read: {}", root_cause(err))
        }
        SdkError::ConstructionFailure(_) => {
            format!("could not build the request: {}", root_cause(err))
        }
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// The innermost cause's message (e.g. "connection closed before message completed").
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}
